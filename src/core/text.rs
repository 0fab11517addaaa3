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

/// The edit distance between two names (Levenshtein: insertions, deletions, substitutions of
/// characters).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The candidate nearest to `name` by edit distance, if it is near enough to be a typo of it
/// (at most 2 edits, or a third of the name's length); the first of equals.
pub fn nearest<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    let near = 2.max(name.chars().count() / 3);
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= near)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_name_is_a_few_edits_away_or_none() {
        assert_eq!(edit_distance("hadop", "hadoop"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let names = vec!["hadoop-spot".to_owned(), "hadoop".to_owned()];
        assert_eq!(nearest("hadop", &names), Some("hadoop"));
        assert_eq!(nearest("spark", &names), None);
    }

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
