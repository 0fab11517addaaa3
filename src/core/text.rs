//! Text from students that reaches a log line, the audit table or a terminal: escaped so it can
//! only ever be one field of one line, and bounded.

/// Escapes what must not reach a log line or the audit table raw: control characters (newlines
/// included, which would forge a second entry), the Unicode line and paragraph separators (a
/// newline to many readers), the bidirectional controls (which make a line display as something
/// else than it says), and backslashes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || is_separator_or_bidi(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// U+2028 and U+2029, and the characters that change the direction of text (Unicode's
/// `Bidi_Control`).
fn is_separator_or_bidi(c: char) -> bool {
    matches!(
        c,
        '\u{2028}'
            | '\u{2029}'
            | '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

/// At most `max` characters of `s`, marked when cut (a parser's message may quote the input).
pub fn shortened(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        assert_eq!(shortened("abc", 3), "abc");
        assert_eq!(shortened("abcd", 3), "abc…");
        assert_eq!(shortened("ééé", 2), "éé…");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("a\nb"), "a\\u{a}b");
        assert_eq!(escape("x\u{1b}[31m"), "x\\u{1b}[31m");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        assert_eq!(escape("plain name"), "plain name");
        assert_eq!(escape("a\u{2028}b\u{2029}"), "a\\u{2028}b\\u{2029}");
        assert_eq!(escape("\u{202e}gnp.exe"), "\\u{202e}gnp.exe");
        assert_eq!(escape("\u{85}\u{9b}\u{7f}"), "\\u{85}\\u{9b}\\u{7f}");
        assert_eq!(escape("naïve café"), "naïve café");
    }
}
