//! What a user of luod gets, and the tests that check it as that user would.
//!
//! This crate has no code of luod's own. Its `Cargo.toml` holds the metadata of luod's Debian
//! package (`[package.metadata.deb]`, read by cargo-deb through `scripts/package`), and its
//! tests check three things a new user meets first:
//!
//! - `tests/deb.rs`: the package, built by `scripts/package` and unpacked into a scratch root,
//!   has every file where its systemd units, its pkg-config file and its man pages say; the
//!   installed luod runs and takes the installed config; the C example compiles against the
//!   installed header and library and does a workload update against the installed luod.
//! - `tests/walkthrough.rs`: the README's "Five minutes with luod", run from a fresh clone,
//!   command by command as written, with the outputs its comments promise.
//! - `tests/non_root.rs`: luod run by a user other than root, on that user's default socket,
//!   doing a handoff, an upgrade and a reboot, as the README's "Running luod as a non-root
//!   user" says.
//!
//! The two small parsers they share are here, with unit tests: [`code_blocks`] reads the
//! fenced code blocks of a section of a Markdown document, and [`unit_values`] reads the
//! values of a key in a section of a systemd unit file.
//!
//! ```
//! let readme = "## Try it\n\n```sh\nluoctl status   # generation 0\n```\n";
//! assert_eq!(luo_package::code_blocks(readme, "Try it"), ["luoctl status   # generation 0\n"]);
//!
//! let unit = "[Service]\nType=notify\nExecStart=/usr/bin/luod\n";
//! assert_eq!(luo_package::unit_values(unit, "Service", "ExecStart"), ["/usr/bin/luod"]);
//! ```
#![forbid(unsafe_code)]

/// The contents of every fenced code block (```` ``` ````) in the section of `markdown` whose
/// heading (any level) is exactly `heading`, up to the next heading of the same or a higher
/// level. Each block's text ends with a newline; the fences are not included. A heading inside
/// a code block does not count as one.
pub fn code_blocks(markdown: &str, heading: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    // The level of the section being read, once its heading was seen.
    let mut level: Option<usize> = None;
    // Inside a fenced block: its text, kept only if the block is in the section.
    let mut block: Option<String> = None;
    for line in markdown.lines() {
        let fence = line.trim_start().starts_with("```");
        if let Some(text) = block.as_mut() {
            if fence {
                if level.is_some() {
                    blocks.push(std::mem::take(text));
                }
                block = None;
            } else {
                text.push_str(line);
                text.push('\n');
            }
            continue;
        }
        if fence {
            block = Some(String::new());
            continue;
        }
        if let Some((hashes, title)) = heading_of(line) {
            match level {
                Some(l) if hashes <= l => break,
                None if title == heading => level = Some(hashes),
                _ => {}
            }
        }
    }
    blocks
}

/// `(level, title)` if `line` is an ATX heading (`## Title`).
fn heading_of(line: &str) -> Option<(usize, &str)> {
    let hashes = line.bytes().take_while(|&b| b == b'#').count();
    if hashes == 0 || hashes > 6 {
        return None;
    }
    let rest = &line[hashes..];
    if !rest.starts_with(' ') {
        return None;
    }
    Some((hashes, rest.trim()))
}

/// Every value of `key` in section `[section]` of a systemd unit file, in order, with
/// systemd's syntax: `#` and `;` start comment lines, a trailing backslash continues a line,
/// whitespace around `=` and the value is dropped. An empty assignment (`Key=`) resets the
/// list, as it does in systemd.
pub fn unit_values(unit: &str, section: &str, key: &str) -> Vec<String> {
    let mut values = Vec::new();
    let mut current: Option<&str> = None;
    let mut joined = String::new();
    for raw in unit.lines() {
        if joined.is_empty() {
            let t = raw.trim_start();
            if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
                continue;
            }
        }
        if let Some(head) = raw.trim_end().strip_suffix('\\') {
            joined.push_str(head);
            joined.push(' ');
            continue;
        }
        joined.push_str(raw);
        let line = std::mem::take(&mut joined);
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(if name == section { section } else { "" });
            continue;
        }
        if current != Some(section) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            let v = v.trim();
            if v.is_empty() {
                values.clear();
            } else {
                values.push(v.to_owned());
            }
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# Title

```sh
outside   # not in the section
```

## Five minutes

Text.

```sh
first
second   # comment
```

```text
## not a heading
```

### A subsection

```sh
third
```

## Next

```sh
elsewhere
```
";

    #[test]
    fn code_blocks_of_a_section_and_its_subsections_only() {
        assert_eq!(
            code_blocks(DOC, "Five minutes"),
            [
                "first\nsecond   # comment\n",
                "## not a heading\n",
                "third\n"
            ]
        );
        assert_eq!(code_blocks(DOC, "A subsection"), ["third\n"]);
        assert_eq!(code_blocks(DOC, "Next"), ["elsewhere\n"]);
        assert!(code_blocks(DOC, "Missing").is_empty());
    }

    #[test]
    fn unit_values_follow_systemd_syntax() {
        let unit = "\
# comment
[Unit]
ExecStart=/not/this
[Service]
ExecStart = /usr/bin/luod \\
  --flag
; ExecStart=/commented
ExecStartPre=/bin/true
ExecReload=/usr/bin/luoctl upgrade
ExecReload=
ExecReload=/usr/bin/luoctl upgrade --json
[Socket]
ListenSequentialPacket=/run/luod/luod.sock
";
        assert_eq!(
            unit_values(unit, "Service", "ExecStart"),
            ["/usr/bin/luod    --flag"]
        );
        assert_eq!(
            unit_values(unit, "Service", "ExecReload"),
            ["/usr/bin/luoctl upgrade --json"]
        );
        assert_eq!(
            unit_values(unit, "Socket", "ListenSequentialPacket"),
            ["/run/luod/luod.sock"]
        );
        assert!(unit_values(unit, "Install", "WantedBy").is_empty());
    }
}
