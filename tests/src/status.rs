//! `SetHandler wasm-status` as the tests read it: `Key: value` lines.

use crate::http::get;

/// The value of `key` in a status text; panics (with the text) if absent.
pub fn value(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .to_string()
}

/// The value of `key` in the status of whichever child answers `path` on
/// 127.0.0.1:`port`.
pub fn fetch(port: u16, path: &str, key: &str) -> String {
    value(&get(port, path).text(), key)
}
