//! A task's input for people: the bytes are opaque to the server (the SDK encodes a task's
//! fields as JSON, other clients may send anything), so they are shown as pretty-printed
//! JSON when they are JSON, as text when they are UTF-8, and as hex otherwise. Long inputs
//! are cut for display; the stored bytes are never changed.

use base64::Engine;

/// Most characters of text (or input bytes as hex) shown.
const SHOWN: usize = 64 * 1024;

/// An input decoded for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// What the bytes were taken as: `empty`, `json`, `text` or `binary`.
    pub kind: &'static str,
    /// What to show (cut at [`SHOWN`] characters).
    pub text: String,
    /// How many bytes the input has.
    pub size: usize,
    /// Whether `text` was cut.
    pub cut: bool,
    /// The whole input in base64, for binary inputs up to [`SHOWN`] bytes (to copy).
    pub base64: Option<String>,
}

/// Decodes `bytes` for display: JSON, else UTF-8 text, else hex.
pub fn decode(bytes: &[u8]) -> Decoded {
    let size = bytes.len();
    if bytes.is_empty() {
        return Decoded {
            kind: "empty",
            text: String::new(),
            size,
            cut: false,
            base64: None,
        };
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        // Checked without building a value, then the text itself indented: keys keep their
        // order, duplicates stay, and numbers keep every digit the client sent.
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            let (text, cut) = cut(reindent(text));
            return Decoded {
                kind: "json",
                text,
                size,
                cut,
                base64: None,
            };
        }
        let (text, cut) = cut(text.to_string());
        return Decoded {
            kind: "text",
            text,
            size,
            cut,
            base64: None,
        };
    }
    let shown = &bytes[..size.min(SHOWN / 3)];
    let mut text = String::with_capacity(shown.len() * 3);
    for (index, chunk) in shown.chunks(16).enumerate() {
        if index > 0 {
            text.push('\n');
        }
        let line: Vec<String> = chunk.iter().map(|byte| format!("{byte:02x}")).collect();
        text.push_str(&line.join(" "));
    }
    Decoded {
        kind: "binary",
        text,
        size,
        cut: shown.len() < size,
        base64: (size <= SHOWN).then(|| base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

/// Valid JSON `json` with two spaces of indentation per level and one member per line;
/// strings, numbers and the order of members are copied as they are. Empty objects and
/// arrays stay `{}` and `[]`.
fn reindent(json: &str) -> String {
    fn new_line(out: &mut String, depth: usize) {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', depth * 2));
    }
    let mut out = String::with_capacity(json.len() + json.len() / 2);
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = json.chars().peekable();
    while let Some(character) = chars.next() {
        if in_string {
            out.push(character);
            if escaped {
                escaped = false;
            } else if character == '\\' {
                escaped = true;
            } else if character == '"' {
                in_string = false;
            }
            continue;
        }
        match character {
            '"' => {
                in_string = true;
                out.push(character);
            }
            '{' | '[' => {
                out.push(character);
                while chars.peek().is_some_and(|next| next.is_whitespace()) {
                    chars.next();
                }
                if let Some(close @ ('}' | ']')) = chars.peek().copied() {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    new_line(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                new_line(&mut out, depth);
                out.push(character);
            }
            ',' => {
                out.push(',');
                new_line(&mut out, depth);
            }
            ':' => out.push_str(": "),
            whitespace if whitespace.is_whitespace() => {}
            other => out.push(other),
        }
    }
    out
}

/// `text` cut at [`SHOWN`] characters (on a character boundary), and whether it was.
fn cut(mut text: String) -> (String, bool) {
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => {
            text.truncate(end);
            (text, true)
        }
        None => (text, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_pretty_printed() {
        let decoded = decode(br#"{"index":3,"seconds":1.5}"#);
        assert_eq!(decoded.kind, "json");
        assert_eq!(decoded.text, "{\n  \"index\": 3,\n  \"seconds\": 1.5\n}");
        assert_eq!(decoded.size, 25);
        assert!(!decoded.cut);
    }

    #[test]
    fn json_keeps_its_order_duplicates_and_digits() {
        let decoded = decode(
            br#"{"z": 1, "a": [ ], "n": 12345678901234567890123, "s": "a,b:{\"}", "z": {}}"#,
        );
        assert_eq!(decoded.kind, "json");
        assert_eq!(
            decoded.text,
            "{\n  \"z\": 1,\n  \"a\": [],\n  \"n\": 12345678901234567890123,\n  \
             \"s\": \"a,b:{\\\"}\",\n  \"z\": {}\n}"
        );
        assert_eq!(
            decode(b"[1,[2,{\"k\":null}]]").text,
            "[\n  1,\n  [\n    2,\n    {\n      \"k\": null\n    }\n  ]\n]"
        );
        assert_eq!(decode(b" \"x\" ").text, "\"x\"");
    }

    #[test]
    fn text_that_is_not_json_is_shown_as_it_is() {
        let decoded = decode("hello <b>wörld</b>".as_bytes());
        assert_eq!(decoded.kind, "text");
        assert_eq!(decoded.text, "hello <b>wörld</b>");
    }

    #[test]
    fn binary_is_shown_as_hex_with_base64() {
        let decoded = decode(&[0xff, 0x00, 0x10]);
        assert_eq!(decoded.kind, "binary");
        assert_eq!(decoded.text, "ff 00 10");
        assert_eq!(decoded.base64.as_deref(), Some("/wAQ"));
        let long = decode(&[0xfe; 20]);
        assert_eq!(long.text.lines().count(), 2, "16 bytes a line");
    }

    #[test]
    fn empty_and_long_inputs() {
        assert_eq!(decode(b"").kind, "empty");
        let long = "é".repeat(SHOWN + 10);
        let decoded = decode(long.as_bytes());
        assert!(decoded.cut);
        assert_eq!(decoded.text.chars().count(), SHOWN);
        assert_eq!(decoded.size, long.len());
    }
}
