//! The accounting report as people and scripts read it: a table (hours to the hundredth,
//! dollars to the cent), CSV and JSON (full precision: hours to nine decimals, dollars to the
//! micro-dollar).

use serde::Serialize;

use super::table::Table;
use crate::accounting::report::Report;
use crate::core::error::Error;
use crate::core::model::Millis;
use crate::core::money::{dollars_exact, dollars_text, micros_to_dollars};

fn hours(ms: Millis) -> f64 {
    ms as f64 / 3_600_000.0
}

/// Milliseconds as hours with nine decimals (exact to the millisecond's 1/3600000 up to the
/// ninth digit).
fn hours_exact(ms: Millis) -> String {
    format!("{:.9}", hours(ms))
}

/// `accounting report --json`: `{"rows": [...], "total": {"instance_hours", "cost_dollars"}}`,
/// each row with its key fields (those of its grouping).
#[derive(Serialize)]
pub struct ReportJson<'a> {
    rows: Vec<RowJson<'a>>,
    total: TotalJson,
}

#[derive(Serialize)]
struct RowJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    day: Option<&'a str>,
    instance_hours: f64,
    cost_dollars: f64,
    estimated: bool,
}

#[derive(Serialize)]
struct TotalJson {
    instance_hours: f64,
    cost_dollars: f64,
}

pub fn json(r: &Report) -> ReportJson<'_> {
    ReportJson {
        rows: r
            .rows
            .iter()
            .map(|row| RowJson {
                cluster: row.cluster.as_deref(),
                owner: row.owner.as_deref(),
                user: row.user.as_deref(),
                profile: row.profile.as_deref(),
                day: row.day.as_deref(),
                instance_hours: hours(row.millis),
                cost_dollars: micros_to_dollars(row.micros),
                estimated: row.estimated,
            })
            .collect(),
        total: TotalJson {
            instance_hours: hours(r.total.millis),
            cost_dollars: micros_to_dollars(r.total.micros),
        },
    }
}

/// `json(r)` as pretty JSON text, with every `instance_hours` written with exactly nine
/// decimals (a JSON number still): what README promises, and what the CSV writes.
pub fn json_text(r: &Report) -> Result<String, Error> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, NineDecimalHours::default());
    json(r)
        .serialize(&mut ser)
        .map_err(|e| Error::runtime(format!("cannot write the JSON: {e}")))?;
    String::from_utf8(out).map_err(|e| Error::runtime(e.to_string()))
}

/// serde_json's pretty formatter, except that a number under the key `instance_hours` is
/// written with nine decimals (serde_json alone writes the shortest form of an f64, which
/// drops trailing zeros and shows binary noise beyond the millisecond).
#[derive(Default)]
struct NineDecimalHours {
    pretty: serde_json::ser::PrettyFormatter<'static>,
    /// The object key being written, and the last one written.
    in_key: bool,
    key: String,
}

impl serde_json::ser::Formatter for NineDecimalHours {
    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f64) -> std::io::Result<()> {
        if self.key == "instance_hours" {
            write!(w, "{v:.9}")
        } else {
            self.pretty.write_f64(w, v)
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.in_key = true;
        self.key.clear();
        self.pretty.begin_object_key(w, first)
    }
    fn end_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.in_key = false;
        self.pretty.end_object_key(w)
    }
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        if self.in_key {
            self.key.push_str(fragment);
        }
        self.pretty.write_string_fragment(w, fragment)
    }
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.pretty.begin_array(w)
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.pretty.end_array(w)
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.pretty.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.pretty.end_array_value(w)
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.pretty.begin_object(w)
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.pretty.end_object(w)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.pretty.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.pretty.end_object_value(w)
    }
}

/// CSV with a header and a total line, full precision.
pub fn csv(r: &Report) -> Result<String, Error> {
    let fields = r.key_fields();
    let mut w = csv::WriterBuilder::new()
        .flexible(true)
        .from_writer(Vec::new());
    let fail = |e: csv::Error| Error::runtime(format!("cannot write the CSV: {e}"));
    let mut header: Vec<&str> = fields.to_vec();
    header.extend(["instance_hours", "cost_dollars", "estimated"]);
    w.write_record(&header).map_err(fail)?;
    for row in &r.rows {
        let mut cells = r.keys_of(row);
        cells.push(hours_exact(row.millis));
        cells.push(dollars_exact(row.micros));
        cells.push(row.estimated.to_string());
        w.write_record(&cells).map_err(fail)?;
    }
    let mut total = vec!["total".to_owned()];
    total.extend(vec![String::new(); fields.len().saturating_sub(1)]);
    total.push(hours_exact(r.total.millis));
    total.push(dollars_exact(r.total.micros));
    total.push(String::new());
    w.write_record(&total).map_err(fail)?;
    let bytes = w
        .into_inner()
        .map_err(|e| Error::runtime(format!("cannot write the CSV: {e}")))?;
    String::from_utf8(bytes).map_err(|e| Error::runtime(e.to_string()))
}

/// A table for people: hours to the hundredth, dollars to the cent, and a total.
pub fn table(r: &Report) -> String {
    let fields = r.key_fields();
    let mut header: Vec<String> = fields.iter().map(|f| f.to_uppercase()).collect();
    header.extend(["HOURS".into(), "COST".into()]);
    let h: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&h);
    for row in &r.rows {
        let mut cells = r.keys_of(row);
        cells.push(format!("{:.2}", hours(row.millis)));
        cells.push(format!(
            "{}{}",
            dollars_text(row.micros),
            if row.estimated { " (estimated)" } else { "" }
        ));
        t.row(cells);
    }
    let mut cells = vec!["total".to_owned()];
    cells.extend(vec![String::new(); fields.len().saturating_sub(1)]);
    cells.push(format!("{:.2}", hours(r.total.millis)));
    cells.push(dollars_text(r.total.micros));
    t.row(cells);
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::report::{By, Row, Total};

    fn one(cluster: &str) -> Report {
        Report {
            rows: vec![Row {
                cluster: Some(cluster.into()),
                cluster_id: Some(1),
                owner: Some("alice".into()),
                user: None,
                profile: Some("p".into()),
                day: None,
                estimated: false,
                millis: 1_000,
                micros: 1_600,
            }],
            total: Total {
                millis: 1_000,
                micros: 1_600,
            },
            by: By::Cluster,
            unknown_types: Vec::new(),
        }
    }

    #[test]
    fn formats_keep_full_precision() {
        let r = one("demo");
        let csv = csv(&r).unwrap();
        assert_eq!(
            csv,
            "cluster,owner,profile,instance_hours,cost_dollars,estimated\n\
             demo,alice,p,0.000277778,0.001600,false\n\
             total,,,0.000277778,0.001600,\n"
        );
        let json = serde_json::to_value(json(&r)).unwrap();
        assert_eq!(json["rows"][0]["cost_dollars"], 0.0016);
        assert_eq!(json["rows"][0]["cluster"], "demo");
        assert!(json["rows"][0].get("user").is_none());
        assert_eq!(json["total"]["cost_dollars"], 0.0016);
        let table = table(&r);
        assert!(
            table.contains("demo     alice  p        0.00   $0.00"),
            "{table}"
        );
    }

    #[test]
    fn json_prints_hours_with_nine_decimals() {
        let mut r = one("demo");
        r.rows[0].millis = 2 * 3_600_000;
        let text = json_text(&r).unwrap();
        assert!(text.contains("\"instance_hours\": 2.000000000,"), "{text}");
        assert!(text.contains("\"instance_hours\": 0.000277778,"), "{text}");
        assert!(text.contains("\"cost_dollars\": 0.0016"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["rows"][0]["instance_hours"], 2.0);
        assert_eq!(v["rows"][0]["cluster"], "demo");
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let csv = csv(&one("a,\"b\"")).unwrap();
        assert!(csv.contains("\"a,\"\"b\"\"\",alice"), "{csv}");
    }
}
