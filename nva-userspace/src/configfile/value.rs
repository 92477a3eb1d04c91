//! Value shapes that serde alone would reject too early: lists whose
//! elements are checked (and reported) by the validator, next to the other
//! errors, instead of stopping the parse.

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// A string or an integer.
#[derive(Debug, PartialEq, Eq)]
pub enum Scalar {
    Str(String),
    Int(i64),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Str(s) => write!(f, "{s:?}"),
            Scalar::Int(i) => write!(f, "{i}"),
        }
    }
}

impl Scalar {
    fn from_u64<E: de::Error>(v: u64) -> Result<Scalar, E> {
        i64::try_from(v)
            .map(Scalar::Int)
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Scalar::from_u64(v)
            }
        }
        d.deserialize_any(V)
    }
}

/// A list of scalars; a single scalar is accepted as a list of one.
#[derive(Debug)]
pub enum OneOrMany {
    One(Scalar),
    Many(Vec<Spanned<Scalar>>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of strings or integers")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(Scalar::Str(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(Scalar::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                Scalar::from_u64(v).map(OneOrMany::One)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Scalar>>()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        d.deserialize_any(V)
    }
}

/// The elements of a list value with their spans (a single scalar gets the
/// value's span).
pub fn items(list: &Spanned<OneOrMany>) -> Vec<(Range<usize>, &Scalar)> {
    match list.get_ref() {
        OneOrMany::One(s) => vec![(list.span(), s)],
        OneOrMany::Many(v) => v.iter().map(|s| (s.span(), s.get_ref())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct Raw {
        l: Spanned<OneOrMany>,
    }

    fn list(text: &str) -> Vec<(Range<usize>, String)> {
        let r: Raw = crate::configfile::parse("f.toml", text).unwrap();
        items(&r.l)
            .into_iter()
            .map(|(s, v)| (s, v.to_string()))
            .collect()
    }

    #[test]
    fn one_or_many() {
        assert_eq!(list("l = \"a\""), [(4..7, "\"a\"".to_string())]);
        assert_eq!(list("l = 5"), [(4..5, "5".to_string())]);
        assert_eq!(
            list("l = [1, \"ü\"]"),
            [(5..6, "1".to_string()), (8..12, "\"ü\"".to_string())]
        );
        assert!(list("l = []").is_empty());
        // Other element types stop the parse, at the element.
        let e = crate::configfile::parse::<Raw>("f.toml", "l = [1, true]").unwrap_err();
        assert!(e[0].to_string().starts_with("f.toml:1:9: "), "{e:?}");
    }
}
