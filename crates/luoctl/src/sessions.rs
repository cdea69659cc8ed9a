//! The session list as `luoctl sessions` prints it.

use luo_client::SessionSummary;

use crate::json::{self, Object};
use crate::table::{Align, Table, printable};

/// A session's state, as one word: `outgoing`, `incoming`, `retrieved` or `finished`.
pub fn state(s: &SessionSummary) -> &'static str {
    match (s.incoming, s.retrieved, s.finished) {
        (false, _, _) => "outgoing",
        (true, _, true) => "finished",
        (true, true, false) => "retrieved",
        (true, false, false) => "incoming",
    }
}

/// `luoctl sessions`: a table, the name last (any width, escaped as [`printable`] says), or a
/// JSON array with the exact names.
pub fn show(list: &[SessionSummary], json: bool) -> String {
    if json {
        let items = list.iter().map(|s| {
            Object::new()
                .uint("owner", s.owner.into())
                .str("name", &s.name)
                .str("state", state(s))
                .uint("files", s.files)
                .uint("bytes", s.bytes)
                .finish()
        });
        return format!("{}\n", json::array(items));
    }
    let mut t = Table::new(&[
        ("UID", Align::Right),
        ("STATE", Align::Left),
        ("FILES", Align::Right),
        ("BYTES", Align::Right),
        ("NAME", Align::Left),
    ]);
    for s in list {
        t.row(vec![
            s.owner.to_string(),
            state(s).to_owned(),
            s.files.to_string(),
            s.bytes.to_string(),
            printable(&s.name),
        ]);
    }
    t.render()
}
