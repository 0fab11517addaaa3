//! Money in exact units: micro-dollars (`Micros`), summed as integers; a float appears only
//! where a number is printed or read from a file. Policy units likewise, in thousandths.

/// Millionths of a dollar.
pub type Micros = i64;

/// Thousandths of a policy cost unit.
pub type MilliUnits = u64;

/// Dollars (from a file) as micro-dollars, rounded to the micro-dollar once; `None` for what
/// is not a price (negative, not finite, absurdly large).
pub fn dollars_to_micros(dollars: f64) -> Option<Micros> {
    (dollars.is_finite() && (0.0..1e9).contains(&dollars))
        .then(|| (dollars * 1_000_000.0).round() as Micros)
}

/// Micro-dollars as a JSON number of dollars (exact to 6 decimals).
pub fn micros_to_dollars(m: Micros) -> f64 {
    m as f64 / 1_000_000.0
}

/// Micro-dollars as dollars and cents, rounded to the cent for people.
pub fn dollars_text(m: Micros) -> String {
    let cents = (m + if m >= 0 { 5_000 } else { -5_000 }) / 10_000;
    format!("${}.{:02}", cents / 100, (cents % 100).abs())
}

/// Micro-dollars as exact dollars with six decimals.
pub fn dollars_exact(m: Micros) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let m = m.abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// Units as people write them: `1`, `0.5`, `2.25`.
pub fn units_text(m: MilliUnits) -> String {
    let whole = m / 1000;
    let frac = m % 1000;
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:03}")
            .trim_end_matches('0')
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_prints_exactly_or_to_the_cent() {
        assert_eq!(dollars_text(1_234_567), "$1.23");
        assert_eq!(dollars_text(4_999), "$0.00");
        assert_eq!(dollars_text(5_000), "$0.01");
        assert_eq!(dollars_exact(1_234_567), "1.234567");
        assert_eq!(dollars_exact(-5), "-0.000005");
        assert_eq!(dollars_to_micros(0.096), Some(96_000));
        assert_eq!(dollars_to_micros(-1.0), None);
        assert_eq!(dollars_to_micros(f64::NAN), None);
        assert_eq!(units_text(2_250), "2.25");
        assert_eq!(units_text(3_000), "3");
    }
}
