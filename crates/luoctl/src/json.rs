//! The JSON luoctl prints: a writer for the few shapes it needs (objects of numbers, strings,
//! booleans and nested documents; arrays of objects), with strings escaped per RFC 8259.
//!
//! Session names are whatever bytes a client chose, read as UTF-8 (invalid sequences become
//! U+FFFD): any character may appear in them, so [`string`] escapes `"`, `\` and every
//! control character, and writes everything else as it is (JSON text is UTF-8).

use std::fmt::Write;

/// `s` as a JSON string, quotes included.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            // The rest of C0, and DEL and C1 too: legal raw, but invisible and unsafe on a
            // terminal that shows the document.
            c if c < ' ' || ('\u{7f}'..='\u{9f}').contains(&c) => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON array of documents already written.
pub fn array(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    format!("[{}]", items.join(","))
}

/// A JSON object, written field by field in the order given.
#[derive(Debug, Default)]
pub struct Object {
    body: String,
}

impl Object {
    /// An empty object.
    pub fn new() -> Object {
        Object::default()
    }

    fn key(mut self, key: &str) -> Object {
        if !self.body.is_empty() {
            self.body.push(',');
        }
        self.body.push_str(&string(key));
        self.body.push(':');
        self
    }

    /// An unsigned integer.
    pub fn uint(self, key: &str, v: u64) -> Object {
        let mut o = self.key(key);
        let _ = write!(o.body, "{v}");
        o
    }

    /// A signed integer.
    pub fn int(self, key: &str, v: i64) -> Object {
        let mut o = self.key(key);
        let _ = write!(o.body, "{v}");
        o
    }

    /// A number with `decimals` digits after the point; a value that is not finite (JSON has
    /// no NaN or infinity) is written as 0.
    pub fn fixed(self, key: &str, v: f64, decimals: usize) -> Object {
        let mut o = self.key(key);
        let v = if v.is_finite() { v } else { 0.0 };
        let _ = write!(o.body, "{v:.decimals$}");
        o
    }

    /// A boolean.
    pub fn bool(self, key: &str, v: bool) -> Object {
        let mut o = self.key(key);
        o.body.push_str(if v { "true" } else { "false" });
        o
    }

    /// A string.
    pub fn str(self, key: &str, v: &str) -> Object {
        let mut o = self.key(key);
        o.body.push_str(&string(v));
        o
    }

    /// A string, or `null`.
    pub fn opt_str(self, key: &str, v: Option<&str>) -> Object {
        match v {
            Some(v) => self.str(key, v),
            None => self.null(key),
        }
    }

    /// `null`.
    pub fn null(self, key: &str) -> Object {
        let mut o = self.key(key);
        o.body.push_str("null");
        o
    }

    /// A document already written (an object or an array from this module).
    pub fn raw(self, key: &str, json: &str) -> Object {
        let mut o = self.key(key);
        o.body.push_str(json);
        o
    }

    /// The object's text.
    pub fn finish(self) -> String {
        format!("{{{}}}", self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_quotes_backslashes_and_every_control_character() {
        assert_eq!(string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(string("l1\nl2\r\t\u{8}\u{c}"), r#""l1\nl2\r\t\b\f""#);
        assert_eq!(
            string("\u{0}\u{1b}[31m\u{1f}"),
            r#""\u0000\u001b[31m\u001f""#
        );
        assert_eq!(string("\u{7f}\u{85}\u{9f}"), r#""\u007f\u0085\u009f""#);
        // Everything else is written as it is: JSON text is UTF-8.
        assert_eq!(
            string("séance 会话 🦀 \u{fffd}/"),
            "\"séance 会话 🦀 \u{fffd}/\""
        );
        assert_eq!(string(""), "\"\"");
    }

    #[test]
    fn every_character_round_trips_through_a_strict_parser() {
        let all: String = (0..=0x10ffff_u32).filter_map(char::from_u32).collect();
        let back: String = serde_json::from_str(&string(&all)).expect("valid JSON");
        assert_eq!(back, all);
    }

    #[test]
    fn objects_keep_field_order_and_types() {
        let inner = Object::new().uint("n", 1).finish();
        let o = Object::new()
            .uint("u", u64::MAX)
            .int("i", -111)
            .fixed("f", 1.23456, 3)
            .fixed("nan", f64::NAN, 2)
            .bool("t", true)
            .str("s", "x\"y")
            .opt_str("none", None)
            .raw("inner", &inner)
            .raw("list", &array([inner.clone(), inner.clone()]))
            .finish();
        assert_eq!(
            o,
            r#"{"u":18446744073709551615,"i":-111,"f":1.235,"nan":0.00,"t":true,"s":"x\"y","none":null,"inner":{"n":1},"list":[{"n":1},{"n":1}]}"#
        );
        assert_eq!(Object::new().finish(), "{}");
        assert_eq!(array(Vec::new()), "[]");
    }
}
