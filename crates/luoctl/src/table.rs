//! Text for a terminal: [`Table`] (columns aligned whatever their contents), [`Fields`]
//! (`label: value` lines aligned on the values) and [`printable`] (a session name made safe
//! to show).
//!
//! A column is as wide as its widest cell. The last column is written unpadded, so it takes
//! text of any width, such as session names in any script: the columns before it hold
//! numbers and fixed words, whose width is their number of characters.

/// How a column's cells are aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// Rows of cells under a header.
#[derive(Debug)]
pub struct Table {
    header: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

/// Columns are separated by this.
const GAP: &str = "  ";

impl Table {
    /// A table with these columns.
    pub fn new(header: &[(&'static str, Align)]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row: one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    /// The header and the rows, one line each.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let header: Vec<String> = self.header.iter().map(|(h, _)| (*h).to_owned()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str(GAP);
                }
                let pad = " ".repeat(widths[i] - width(cell));
                let last = i + 1 == row.len();
                match self.header[i].1 {
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                    Align::Left => {
                        line.push_str(cell);
                        if !last {
                            line.push_str(&pad);
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `label: value` lines, the values aligned.
#[derive(Debug, Default)]
pub struct Fields {
    lines: Vec<(&'static str, String)>,
}

impl Fields {
    /// No lines yet.
    pub fn new() -> Fields {
        Fields::default()
    }

    /// Adds `label: value`.
    pub fn add(&mut self, label: &'static str, value: String) {
        self.lines.push((label, value));
    }

    /// The lines, each value starting one column after the longest label's colon; `labels`
    /// are every label the caller may add, so that the alignment does not depend on which
    /// lines a given output has.
    pub fn render(&self, labels: &[&str]) -> String {
        let longest = labels
            .iter()
            .copied()
            .chain(self.lines.iter().map(|(l, _)| *l))
            .map(width)
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (label, value) in &self.lines {
            let pad = " ".repeat(longest - width(label) + 1);
            out.push_str(&format!("{label}:{pad}{value}\n"));
        }
        out
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// `name` as luoctl shows it on a terminal: a session name is any bytes another user chose,
/// and root sees every user's. Control characters (which could move the cursor or recolour
/// root's terminal, or break a table's line in two), the marks that reorder text (bidi
/// overrides, which could make one name look like another) and the backslash itself are
/// written as escapes: `\n`, `\t`, `\\`, `\x1b`, `\u{202e}`. Everything else is shown as it
/// is. `--json` gives the exact name.
pub fn printable(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' || ('\u{7f}'..='\u{9f}').contains(&c) => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                out.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut t = Table::new(&[
            ("UID", Align::Right),
            ("STATE", Align::Left),
            ("BYTES", Align::Right),
            ("NAME", Align::Left),
        ]);
        t.row(vec!["0".into(), "outgoing".into(), "1".into(), "a".into()]);
        t.row(vec![
            "4294967295".into(),
            "incoming".into(),
            "18446744073709551615".into(),
            "会话-🦀-séance".into(),
        ]);
        assert_eq!(
            t.render(),
            "       UID  STATE                    BYTES  NAME\n\
             \x20        0  outgoing                     1  a\n\
             4294967295  incoming  18446744073709551615  会话-🦀-séance\n"
        );
    }

    #[test]
    fn an_empty_table_is_its_header() {
        let t = Table::new(&[("A", Align::Right), ("NAME", Align::Left)]);
        assert_eq!(t.render(), "A  NAME\n");
    }

    #[test]
    fn fields_align_on_the_longest_label_that_may_appear() {
        let mut f = Fields::new();
        f.add("files", "1".into());
        f.add("descriptors", "2 of 3".into());
        assert_eq!(
            f.render(&["files", "descriptors", "last upgrade"]),
            "files:        1\ndescriptors:  2 of 3\n"
        );
    }

    #[test]
    fn printable_escapes_what_a_terminal_would_obey() {
        assert_eq!(printable("plain name"), "plain name");
        assert_eq!(printable("会话 🦀 \u{fffd}"), "会话 🦀 \u{fffd}");
        assert_eq!(printable("a\nb\tc\\d"), "a\\nb\\tc\\\\d");
        assert_eq!(printable("\u{1b}[31mred\u{7}"), "\\x1b[31mred\\x07");
        assert_eq!(printable("\u{9b}2J"), "\\x9b2J");
        assert_eq!(printable("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
    }
}
