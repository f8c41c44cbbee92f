//! Output helpers shared by the commands: plain-text tables and key/value rows for people,
//! one JSON document for machines, and the wire values (ids, timestamps) both need as text.
//!
//! Data goes to stdout; everything else (notes, hints, errors) goes to stderr.
//!
//! Text for people that reaches a terminal has its control characters escaped
//! ([`escape_controls`]): task logs, job names and displays come from task code and clients,
//! and an escape sequence in them would otherwise drive the reader's terminal (clear it, set
//! its title, rewrite lines). Piped or redirected, the text is kept as it is, so a file or
//! `grep` sees exactly what was logged; JSON is never escaped (serde_json already writes C0
//! characters as `\u00XX`, and the text must round-trip).

use std::borrow::Cow;
use std::io::{IsTerminal, Write};

use serde_json::Value;

use crate::api::convert::{self, InvalidId};
use crate::api::tilebox_v1::Id;

/// Columns of a table are separated by this many spaces.
const COLUMN_GAP: usize = 2;

/// Writes `text` (for people) and a newline to stdout, its control characters escaped when
/// stdout is a terminal. A closed pipe (`tilebox job list | head`) is not an error: the
/// reader has what it wanted.
pub fn print_text(text: &str) -> anyhow::Result<()> {
    if std::io::stdout().is_terminal() {
        write_line(&escape_controls(text))
    } else {
        write_line(text)
    }
}

/// Whether a terminal would act on `character` instead of showing it: C0 and C1 controls
/// and DEL (but newline and tab, which only lay text out), and the bidirectional overrides,
/// embeddings, isolates and marks that reorder what is shown.
fn is_unsafe_for_terminals(character: char) -> bool {
    (character.is_control() && !matches!(character, '\n' | '\t'))
        || matches!(
            character,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every character a terminal would act on written as an escape: `\r`,
/// `\x1b` (below U+0080), `\u{202e}` (others). Newlines and tabs stay.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe_for_terminals) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for character in text.chars() {
        match character {
            '\r' => escaped.push_str("\\r"),
            character if is_unsafe_for_terminals(character) && u32::from(character) < 0x80 => {
                escaped.push_str(&format!("\\x{:02x}", u32::from(character)));
            }
            character if is_unsafe_for_terminals(character) => {
                escaped.push_str(&format!("\\u{{{:x}}}", u32::from(character)));
            }
            character => escaped.push(character),
        }
    }
    Cow::Owned(escaped)
}

/// Writes `text` and a newline to stdout as it is.
fn write_line(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("cannot write to stdout: {error}"))
        }
        _ => Ok(()),
    }
}

/// Writes `value` to stdout as one compact JSON document (never escaped: see the module doc).
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    write_line(&value.to_string())
}

/// A plain-text table: a header row and left-aligned columns, no borders.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|title| title.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are blank.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The table as text, one line per row, without a trailing newline.
    pub fn render(&self) -> String {
        let mut lines = Vec::with_capacity(self.rows.len() + 1);
        lines.push(self.header.clone());
        lines.extend(self.rows.iter().cloned());
        render_rows(&lines)
    }
}

/// Key/value rows (`Slug  my-cluster`), keys aligned, without a trailing newline.
pub fn key_values(rows: &[(&str, String)]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(key, value)| vec![key.to_string(), value.clone()])
        .collect();
    render_rows(&rows)
}

/// Aligns cells into columns; the last cell of a line is not padded.
fn render_rows(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for (index, row) in rows.iter().enumerate() {
        if index > 0 {
            text.push('\n');
        }
        let mut line = String::new();
        for (column, width) in widths.iter().enumerate() {
            let cell = row.get(column).map(String::as_str).unwrap_or("");
            line.push_str(cell);
            if column + 1 < columns {
                let padding = width - cell.chars().count() + COLUMN_GAP;
                line.extend(std::iter::repeat_n(' ', padding));
            }
        }
        text.push_str(line.trim_end());
    }
    text
}

/// The lowercase hyphenated UUID of a wire id; `None` for an absent or empty id.
pub fn id_text(id: Option<&Id>) -> Result<Option<String>, InvalidId> {
    Ok(convert::uuid_of(id)?.map(|uuid| uuid.to_string()))
}

/// A wire id as JSON: its UUID string, or `null` for an absent or empty id.
pub fn id_json(id: Option<&Id>) -> Result<Value, InvalidId> {
    Ok(id_text(id)?.map_or(Value::Null, Value::String))
}

/// A timestamp as JSON: RFC 3339 in UTC, or `null` when absent.
pub fn timestamp_json(timestamp: Option<&prost_types::Timestamp>) -> Value {
    timestamp.map_or(Value::Null, |timestamp| Value::String(rfc3339(timestamp)))
}

/// A timestamp for people: RFC 3339 in UTC to the second, `-` when absent.
pub fn timestamp_text(timestamp: Option<&prost_types::Timestamp>) -> String {
    match timestamp {
        Some(timestamp) => rfc3339(&prost_types::Timestamp {
            seconds: timestamp.seconds,
            nanos: 0,
        }),
        None => "-".to_string(),
    }
}

/// RFC 3339 in UTC (`2024-05-01T12:30:00.25Z`); the fraction is shown only when non-zero,
/// without trailing zeros.
pub fn rfc3339(timestamp: &prost_types::Timestamp) -> String {
    // Normalise nanos outside 0..1e9 (a timestamp the wire format allows but never should carry).
    let seconds = timestamp.seconds + i64::from(timestamp.nanos.div_euclid(1_000_000_000));
    let nanos = timestamp.nanos.rem_euclid(1_000_000_000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    );
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped_and_text_is_kept() {
        use super::escape_controls;
        assert_eq!(
            escape_controls("\x1b[2J\x1b]0;pwned\x07 back\rover"),
            "\\x1b[2J\\x1b]0;pwned\\x07 back\\rover"
        );
        assert_eq!(
            escape_controls("a\u{9b}31m \u{202e}txt.exe \x7f"),
            "a\\u{9b}31m \\u{202e}txt.exe \\x7f"
        );
        let plain = "line one\n\tindented: ünïcode ✓";
        assert!(matches!(
            escape_controls(plain),
            std::borrow::Cow::Borrowed(text) if text == plain
        ));
    }

    use super::*;

    fn at(seconds: i64, nanos: i32) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos }
    }

    #[test]
    fn table_aligns_columns_and_trims_trailing_space() {
        let mut table = Table::new(&["ID", "NAME", "STATE"]);
        table.push(vec!["1".into(), "a-long-name".into(), "running".into()]);
        table.push(vec!["22".into(), "b".into(), String::new()]);
        assert_eq!(
            table.render(),
            "ID  NAME         STATE\n1   a-long-name  running\n22  b"
        );
    }

    #[test]
    fn table_without_rows_is_its_header() {
        assert_eq!(Table::new(&["SLUG", "NAME"]).render(), "SLUG  NAME");
    }

    #[test]
    fn table_widths_count_characters_not_bytes() {
        let mut table = Table::new(&["NAME", "X"]);
        table.push(vec!["äöü".into(), "1".into()]);
        assert_eq!(table.render(), "NAME  X\näöü   1");
    }

    #[test]
    fn key_values_align_keys() {
        let text = key_values(&[
            ("Slug", "dev-cluster".to_string()),
            ("Name", "Dev".to_string()),
            ("Deletable", "true".to_string()),
        ]);
        assert_eq!(
            text,
            "Slug       dev-cluster\nName       Dev\nDeletable  true"
        );
    }

    #[test]
    fn rfc3339_formats_utc_dates() {
        assert_eq!(rfc3339(&at(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(&at(1_700_000_000, 0)), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(&at(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(&at(-1, 0)), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(&at(4_102_444_800, 0)), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn rfc3339_shows_fractions_without_trailing_zeros() {
        assert_eq!(rfc3339(&at(0, 250_000_000)), "1970-01-01T00:00:00.25Z");
        assert_eq!(
            rfc3339(&at(0, 123_456_789)),
            "1970-01-01T00:00:00.123456789Z"
        );
        assert_eq!(rfc3339(&at(0, 1_000)), "1970-01-01T00:00:00.000001Z");
        assert_eq!(rfc3339(&at(1, -500_000_000)), "1970-01-01T00:00:00.5Z");
    }

    #[test]
    fn timestamps_render_null_or_dash_when_absent() {
        assert_eq!(timestamp_json(None), Value::Null);
        assert_eq!(timestamp_text(None), "-");
        assert_eq!(
            timestamp_text(Some(&at(0, 999_000_000))),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            timestamp_json(Some(&at(0, 1_000_000))),
            Value::String("1970-01-01T00:00:00.001Z".into())
        );
    }

    #[test]
    fn ids_render_as_lowercase_hyphenated_uuids() {
        let uuid = uuid::Uuid::parse_str("0190A8C4-0000-7000-8000-00000000ABCD").unwrap();
        assert_eq!(
            id_json(Some(&convert::id(uuid))).unwrap(),
            Value::String("0190a8c4-0000-7000-8000-00000000abcd".into())
        );
        assert_eq!(id_json(None).unwrap(), Value::Null);
        assert!(id_text(Some(&Id { uuid: vec![1] })).is_err());
    }
}
