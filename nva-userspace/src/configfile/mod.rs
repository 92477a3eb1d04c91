//! The config-file toolkit that the agent's and the failover daemon's
//! config files share: TOML read with the byte span of every value
//! ([`toml::Spanned`]), and problems reported as `FILE:LINE:COL: message`.
//!
//! A config is read in two steps. [`parse`] deserializes the text into the
//! caller's `Raw*` structs (`#[serde(deny_unknown_fields)]`, values wrapped in
//! `Spanned`); a TOML syntax error, an unknown key or a value of the wrong
//! type stops there with one error. The caller then validates the meaning of
//! every value with a [`Checker`], which collects *all* problems, each at the
//! position of the offending value, and hands them back sorted by position.
//!
//! The bottom layer of the crate: it knows TOML and addresses, not what a
//! rule or an NVA is, and imports nothing from the rest of the crate.

mod checker;
mod net;
mod value;

pub use checker::{Checker, Names};
pub use net::{network, parse_addr_with_len, parse_prefix};
pub use value::{items, OneOrMany, Scalar};

use std::path::Path;

use serde::de::DeserializeOwned;

/// One problem in a config file. `line` and `col` are 1-based; both are 0
/// when the problem is not at a place in the file (e.g. it cannot be read).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", position(.line, .col))]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// `:LINE:COL`, or nothing for an error that is not at a place in the file.
fn position(line: &usize, col: &usize) -> String {
    if *line == 0 {
        String::new()
    } else {
        format!(":{line}:{col}")
    }
}

/// Reads the config file at `path` as text. A file that cannot be read (or
/// is not UTF-8) gives one error without a position.
pub fn read(path: &Path) -> Result<String, Vec<ConfigError>> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        vec![ConfigError {
            file: file.clone(),
            line: 0,
            col: 0,
            message: format!("cannot read: {e}"),
        }]
    })?;
    String::from_utf8(bytes).map_err(|e| {
        // The place of the first byte that is not UTF-8, in the valid text
        // before it.
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let valid = std::str::from_utf8(&bytes[..at]).unwrap_or_default();
        let (line, col) = line_col(valid, at);
        vec![ConfigError {
            file,
            line,
            col,
            message: format!(
                "the file is not UTF-8 text (byte 0x{:02x}); a config file must be UTF-8",
                bytes[at]
            ),
        }]
    })
}

/// A multi-line message as one line; None when it says nothing.
fn one_line(message: &str) -> Option<String> {
    let text = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    (!text.is_empty()).then_some(text)
}

/// Deserializes TOML `text` into `T`; `file` is only used in the error. The
/// error points at the start of the span toml reports (1:1 without one).
pub fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, Vec<ConfigError>> {
    toml::from_str(text).map_err(|e| {
        let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        vec![ConfigError {
            file: file.to_string(),
            line,
            col,
            // One line per error: toml's messages may span several.
            message: match (one_line(e.message()), e.span()) {
                // toml names the key only by its span.
                (Some(m), Some(s)) if m == "duplicate key" => {
                    let key = text.get(s).unwrap_or_default().trim();
                    format!("duplicate key `{key}`")
                }
                (Some(m), _) => m,
                // Some syntax errors come without a message of their own.
                (None, _) => {
                    "invalid TOML here (a value, key or bracket is missing or out of place)".into()
                }
            },
        }]
    })
}

/// 1-based line and column (in characters, not bytes) of byte `offset` in
/// `text`. An offset past the end means the end; one inside a multi-byte
/// character means that character. A `\r` before `\n` is the last column
/// of its line, so CRLF files count like LF ones.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // Only deserialized.
    struct Raw {
        a: Option<toml::Spanned<i64>>,
        s: Option<toml::Spanned<String>>,
    }

    fn parse_err(text: &str) -> String {
        parse::<Raw>("f.toml", text).unwrap_err()[0].to_string()
    }

    #[test]
    fn line_col_counts_characters() {
        let t = "a\nüx = 1\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 2), (2, 1));
        assert_eq!(line_col(t, 4), (2, 2)); // after the 2-byte 'ü'
        assert_eq!(line_col(t, 3), (2, 1)); // inside 'ü': the 'ü'
        assert_eq!(line_col(t, 100), (3, 1));
        // 3- and 4-byte characters are one column each.
        let t = "€😀x";
        assert_eq!(line_col(t, 7), (1, 3));
    }

    #[test]
    fn line_col_with_crlf() {
        let t = "a = 1\r\nb = 2\r\n";
        assert_eq!(line_col(t, 5), (1, 6)); // the '\r'
        assert_eq!(line_col(t, 7), (2, 1));
        assert_eq!(line_col(t, 11), (2, 5));
        assert_eq!(line_col(t, t.len()), (3, 1));
    }

    #[test]
    fn a_key_without_a_value_at_the_end_is_explained() {
        let e = parse::<toml::Value>("f.toml", "[a]\nb =").unwrap_err();
        assert_eq!((e[0].line, e[0].col), (2, 4));
        // toml's own message, or ours where it has none; one line.
        assert!(!e[0].message.is_empty(), "{}", e[0]);
        assert!(!e[0].message.contains('\n'), "{}", e[0]);
    }

    #[test]
    fn line_col_at_end_of_file() {
        assert_eq!(line_col("", 0), (1, 1));
        assert_eq!(line_col("ab", 2), (1, 3));
        assert_eq!(line_col("ab\n", 3), (2, 1));
    }

    #[test]
    fn display() {
        let e = |line, col| ConfigError {
            file: "f.toml".into(),
            line,
            col,
            message: "bad".into(),
        };
        assert_eq!(e(3, 7).to_string(), "f.toml:3:7: bad");
        assert_eq!(e(0, 0).to_string(), "f.toml: bad");
    }

    #[test]
    fn toml_errors_have_positions() {
        assert!(parse_err("a = 1\nb = 2\n").starts_with("f.toml:2:1: unknown field `b`"));
        assert!(parse_err("a = \"x\"\n").starts_with("f.toml:1:5: "));
        // Multi-byte characters before the error count as one column.
        assert!(parse_err("s = \"ü€\"\nü = 1\n").starts_with("f.toml:2:1: "));
        // CRLF line ends.
        assert!(parse_err("s = \"x\"\r\nb = 2\r\n").starts_with("f.toml:2:1: unknown field `b`"));
        // An error at the end of the file (an unterminated string, no newline).
        let e = parse_err("a = 1\ns = \"x");
        assert!(e.starts_with("f.toml:2:"), "{e}");
        let e = parse_err("a = ");
        assert!(e.starts_with("f.toml:1:5: "), "{e}");
        // Always one line.
        assert!(!parse_err("[a\n").contains('\n'));
    }

    #[test]
    fn read_refuses_what_is_not_utf8() {
        let path = std::env::temp_dir().join(format!("nva-configfile-{}.toml", std::process::id()));
        std::fs::write(&path, b"a = \"\xff\"\n").unwrap();
        let e = read(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(e.len(), 1);
        // At the bad byte: line 1, column 6.
        assert_eq!((e[0].line, e[0].col), (1, 6));
        assert_eq!(
            e[0].to_string(),
            format!(
                "{}:1:6: the file is not UTF-8 text (byte 0xff); a config file must be UTF-8",
                path.display()
            )
        );
        let e = read(Path::new("/nonexistent/nva.toml")).unwrap_err();
        assert!(e[0]
            .to_string()
            .starts_with("/nonexistent/nva.toml: cannot read: "));
    }
}
