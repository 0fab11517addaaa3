//! A plain left-aligned text table, for the commands' human output, and times as people read
//! them there.

/// A time (milliseconds since the epoch) in this machine's local time zone, in `format`
/// (strftime); empty if out of range.
pub use crate::core::model::local_time_as as local_time;

/// An RFC 3339 time (as the service answers) in local time, in `format`; the text itself if it
/// is none.
pub fn local_rfc3339(rfc3339: &str, format: &str) -> String {
    match rfc3339.parse::<jiff::Timestamp>() {
        Ok(t) => local_time(t.as_millisecond(), format),
        Err(_) => rfc3339.to_owned(),
    }
}

pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    pub fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }

    pub fn render(&self) -> String {
        let cols = self.rows[0].len();
        let widths: Vec<usize> = (0..cols)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        self.rows
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(i, c)| {
                        if i + 1 == cols {
                            c.clone()
                        } else {
                            format!("{c:<w$}", w = widths[i])
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
