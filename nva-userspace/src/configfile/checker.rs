//! [`Checker`]: collects the problems of a config file at their positions,
//! with the typed checks both configs make.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};

use toml::Spanned;

use super::{line_col, ConfigError};

/// The problems found so far in one file (`file` names it in messages,
/// `text` maps spans to positions).
pub struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Checker {
            file,
            text,
            errors: Vec::new(),
        }
    }

    /// Records a problem at the start of `span` (`0..0`: the file's start,
    /// for what is missing from the file as a whole).
    pub fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            col,
            message: message.into(),
        });
    }

    /// The 1-based line of byte `offset`.
    pub fn line_of(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }

    /// How many problems so far; with [`Checker::failed_since`], whether a
    /// part of the file added any.
    pub fn mark(&self) -> usize {
        self.errors.len()
    }

    pub fn failed_since(&self, mark: usize) -> bool {
        self.errors.len() != mark
    }

    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    /// All problems, in the order of their positions in the file (the order
    /// they were found in where two share one), or `Ok` when there are none.
    pub fn finish(self) -> Result<(), Vec<ConfigError>> {
        if self.errors.is_empty() {
            return Ok(());
        }
        let mut errors = self.errors;
        errors.sort_by_key(|e| (e.line, e.col));
        Err(errors)
    }

    /// `result`'s value, or its message recorded at `span`.
    pub fn check<T>(&mut self, span: Range<usize>, result: Result<T, String>) -> Option<T> {
        result.map_err(|m| self.err(span, m)).ok()
    }

    /// A value that must be present; `message` at `at` (usually the
    /// enclosing table) when it is not.
    pub fn required<'v, T>(
        &mut self,
        value: &'v Option<Spanned<T>>,
        at: Range<usize>,
        message: impl Into<String>,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() {
            self.err(at, message);
        }
        value.as_ref()
    }

    /// An integer in `range` (counts, sizes, durations in s or ms):
    /// "`key` = V is out of range (MIN to MAX)" otherwise.
    pub fn int_in(
        &mut self,
        key: &str,
        v: &Spanned<i64>,
        range: RangeInclusive<u32>,
    ) -> Option<u32> {
        match u32::try_from(*v.get_ref()) {
            Ok(n) if range.contains(&n) => Some(n),
            _ => {
                self.err(
                    v.span(),
                    format!(
                        "{key} = {} is out of range ({} to {})",
                        v.get_ref(),
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
        }
    }

    /// Like [`Checker::int_in`] for an optional key: `default` when it is
    /// absent or out of range.
    pub fn int_or(
        &mut self,
        key: &str,
        v: Option<&Spanned<i64>>,
        default: u32,
        range: RangeInclusive<u32>,
    ) -> u32 {
        v.and_then(|v| self.int_in(key, v, range))
            .unwrap_or(default)
    }

    /// One of a fixed set of strings, each standing for a `T`:
    /// "`key` = "x" is not valid; expected "a", "b" or "c"" otherwise
    /// (the choices in the order given).
    pub fn one_of<T: Copy>(
        &mut self,
        key: &str,
        v: &Spanned<String>,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let found = choices.iter().find(|(name, _)| name == v.get_ref());
        if found.is_none() {
            let mut expected = String::new();
            for (i, (name, _)) in choices.iter().enumerate() {
                let sep = match i {
                    0 => "",
                    _ if i + 1 == choices.len() => " or ",
                    _ => ", ",
                };
                let _ = write!(expected, "{sep}{name:?}");
            }
            self.err(
                v.span(),
                format!(
                    "{key} = {:?} is not valid; expected {expected}",
                    v.get_ref()
                ),
            );
        }
        found.map(|(_, t)| *t)
    }

    /// An IP address and port: "`key` = "x" is not an address with a port
    /// (`hint`)" otherwise, `hint` showing what one looks like.
    pub fn socket_addr(
        &mut self,
        key: &str,
        v: &Spanned<String>,
        hint: &str,
    ) -> Option<SocketAddr> {
        let parsed = v.get_ref().parse().map_err(|_| {
            format!(
                "{key} = {:?} is not an address with a port ({hint})",
                v.get_ref()
            )
        });
        self.check(v.span(), parsed)
    }

    /// An IP address: "`key` = "x" is not an IP address" otherwise.
    pub fn ip(&mut self, key: &str, v: &Spanned<String>) -> Option<IpAddr> {
        let parsed = v
            .get_ref()
            .parse()
            .map_err(|_| format!("{key} = {:?} is not an IP address", v.get_ref()));
        self.check(v.span(), parsed)
    }
}

/// Names that must be unique in a file, each with the byte offset where it
/// was first used (its line is only computed for an error: doing it for
/// every name would be quadratic in the file size).
#[derive(Default)]
pub struct Names(HashMap<String, usize>);

impl Names {
    /// Records `name` used at byte `at`; `Some(first)` when it was used
    /// before, at byte `first` (then it is not recorded again).
    pub fn first_use(&mut self, name: &str, at: usize) -> Option<usize> {
        if let Some(&first) = self.0.get(name) {
            return Some(first);
        }
        self.0.insert(name.to_string(), at);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Raw {
        n: Spanned<i64>,
        s: Spanned<String>,
        t: Option<Spanned<String>>,
    }

    const TEXT: &str = "# ü\nn = -1\ns = \"drive\"\n";

    fn raw() -> Raw {
        super::super::parse("f.toml", TEXT).unwrap()
    }

    fn messages(c: Checker) -> Vec<String> {
        c.finish()
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn errors_come_sorted_by_position() {
        let r = raw();
        let mut c = Checker::new("f.toml", TEXT);
        assert!(c.is_clean());
        let mark = c.mark();
        c.err(r.s.span(), "second");
        c.err(0..0, "first");
        c.err(r.n.span(), "middle");
        assert!(c.failed_since(mark));
        assert_eq!(
            messages(c),
            [
                "f.toml:1:1: first",
                "f.toml:2:5: middle",
                "f.toml:3:5: second"
            ]
        );
        assert!(Checker::new("f.toml", TEXT).finish().is_ok());
    }

    #[test]
    fn typed_checks() {
        let r = raw();
        let mut c = Checker::new("f.toml", TEXT);
        assert_eq!(c.int_in("n", &r.n, 1..=u32::MAX), None);
        assert_eq!(c.int_or("n", Some(&r.n), 7, 1..=3), 7);
        assert_eq!(c.int_or("n", None, 7, 1..=3), 7);
        assert_eq!(
            c.one_of("s", &r.s, &[("auto", 0), ("driver", 1), ("skb", 2)]),
            None
        );
        assert_eq!(c.one_of("s", &r.s, &[("drive", 5), ("x", 6)]), Some(5));
        assert_eq!(c.one_of("s", &r.s, &[("a", 0), ("b", 1)]), None);
        assert_eq!(c.socket_addr("s", &r.s, "like \"10.0.0.1:80\""), None);
        assert_eq!(c.ip("s", &r.s), None);
        assert!(c.required(&r.t, 0..0, "t is required").is_none());
        assert_eq!(
            messages(c),
            [
                "f.toml:1:1: t is required",
                "f.toml:2:5: n = -1 is out of range (1 to 4294967295)",
                "f.toml:2:5: n = -1 is out of range (1 to 3)",
                "f.toml:3:5: s = \"drive\" is not valid; expected \"auto\", \"driver\" or \"skb\"",
                "f.toml:3:5: s = \"drive\" is not valid; expected \"a\" or \"b\"",
                "f.toml:3:5: s = \"drive\" is not an address with a port (like \"10.0.0.1:80\")",
                "f.toml:3:5: s = \"drive\" is not an IP address",
            ]
        );
    }

    #[test]
    fn names_remember_their_first_use() {
        let mut n = Names::default();
        assert_eq!(n.first_use("a", 3), None);
        assert_eq!(n.first_use("b", 9), None);
        assert_eq!(n.first_use("a", 20), Some(3));
        assert_eq!(n.first_use("a", 30), Some(3));
        let c = Checker::new("f.toml", "x\ny\nz");
        assert_eq!(c.line_of(4), 3);
    }
}
