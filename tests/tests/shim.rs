//! The C shim's sources keep their promises: every log tag is registered
//! in `mod_wasm_c/log-tags.txt`, used once, and below the next number.

use std::collections::BTreeMap;
use std::fs;

use e2e::root;

/// The C files of the shim: name and text.
fn shim_sources() -> Vec<(String, String)> {
    fs::read_dir(root().join("mod_wasm_c"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// Each `WASMLOGNO(nnnnn)` in the shim's sources, with the files using it.
fn tags_in_sources() -> BTreeMap<u32, Vec<String>> {
    let mut tags: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (file, text) in shim_sources() {
        for (i, _) in text.match_indices("WASMLOGNO(") {
            let digits: String = text[i + 10..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if digits.is_empty() {
                continue; // the macro's own definition
            }
            tags.entry(digits.parse().unwrap())
                .or_default()
                .push(file.clone());
        }
    }
    tags
}

/// The registry: its tags, those of them retired (their message is gone,
/// the number stays taken), and its next number.
fn registry() -> (Vec<u32>, Vec<u32>, u32) {
    let text = fs::read_to_string(root().join("mod_wasm_c/log-tags.txt")).unwrap();
    let mut tags = Vec::new();
    let mut retired = Vec::new();
    let mut next = None;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        if let Some(n) = line.strip_prefix("next-number: ") {
            next = Some(n.trim().parse().unwrap());
        } else {
            let tag = line.split_whitespace().next().unwrap();
            let n = tag
                .strip_prefix("WASM")
                .and_then(|d| d.parse().ok())
                .unwrap_or_else(|| panic!("not a tag: {line}"));
            if line.split_whitespace().nth(1) == Some("retired") {
                retired.push(n);
            }
            tags.push(n);
        }
    }
    (tags, retired, next.expect("no next-number line"))
}

#[test]
fn every_log_tag_is_used_once_and_registered() {
    let used = tags_in_sources();
    assert!(used.len() > 20, "found only {used:?}");
    let twice: Vec<_> = used.iter().filter(|(_, files)| files.len() > 1).collect();
    assert!(twice.is_empty(), "tags used more than once: {twice:?}");
    let (registered, retired, next) = registry();
    let mut sorted = registered.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), registered.len(), "a tag is registered twice");
    let unregistered: Vec<_> = used.keys().filter(|n| !registered.contains(n)).collect();
    assert!(
        unregistered.is_empty(),
        "add to log-tags.txt: {unregistered:?}"
    );
    let unused: Vec<_> = registered
        .iter()
        .filter(|n| !used.contains_key(n) && !retired.contains(n))
        .collect();
    assert!(
        unused.is_empty(),
        "registered but no longer logged (keep the number: mark its line \
         `retired`): {unused:?}"
    );
    let revived: Vec<_> = retired.iter().filter(|n| used.contains_key(n)).collect();
    assert!(revived.is_empty(), "retired tags used again: {revived:?}");
    let highest = registered.iter().max().unwrap();
    assert!(next > *highest, "next-number {next} is not above {highest}");
}

/// The directives the shim registers (`AP_INIT_*("Name", ...)`).
fn registered_directives() -> Vec<String> {
    let mut names = Vec::new();
    for (_, text) in shim_sources() {
        for (i, _) in text.match_indices("AP_INIT_") {
            let rest = &text[i..];
            if let Some(q) = rest.find('"') {
                let name: String = rest[q + 1..].chars().take_while(|&c| c != '"').collect();
                if rest[..q].chars().all(|c| {
                    c.is_ascii_uppercase() || "_0123456789(".contains(c) || c.is_whitespace()
                }) && !names.contains(&name)
                {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// Each `## Name` section of docs/directives.md, with its `Default` field.
fn documented_defaults() -> BTreeMap<String, String> {
    let text = fs::read_to_string(root().join("docs/directives.md")).unwrap();
    let mut out = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("## ") {
            current = Some(name.trim().to_string());
            out.insert(name.trim().to_string(), String::new());
        } else if let (Some(name), Some(v)) = (&current, line.strip_prefix("| Default | ")) {
            let v = v.trim_end_matches('|').trim().trim_matches('`').to_string();
            out.insert(name.clone(), v);
        }
    }
    out
}

#[test]
fn every_directive_is_documented_with_the_codes_default() {
    let registered = registered_directives();
    assert!(registered.len() >= 16, "found only {registered:?}");
    let docs = documented_defaults();
    let missing: Vec<_> = registered
        .iter()
        .filter(|d| !docs.contains_key(*d))
        .collect();
    assert!(missing.is_empty(), "not in docs/directives.md: {missing:?}");
    let stale: Vec<_> = docs
        .keys()
        .filter(|d| d.starts_with("Wasm") && !registered.contains(d))
        .collect();
    assert!(stale.is_empty(), "documented but not registered: {stale:?}");

    use wasm_runtime::limits::*;
    let secs = |d: &str| -> u64 { d.parse().unwrap_or_else(|_| panic!("not seconds: {d}")) };
    assert_eq!(secs(&docs["WasmTimeout"]), DEFAULT_TIMEOUT.as_secs());
    assert_eq!(
        parse_size(&docs["WasmMaxMemory"]).unwrap(),
        DEFAULT_MAX_MEMORY as u64
    );
    assert_eq!(
        parse_size(&docs["WasmMaxOutput"]).unwrap(),
        DEFAULT_MAX_OUTPUT as u64
    );
    assert_eq!(docs["WasmMaxOpenFiles"], DEFAULT_MAX_OPEN_FILES.to_string());
    assert_eq!(
        docs["WasmInstanceReuse"],
        DEFAULT_INSTANCE_REUSE.to_string()
    );
    assert_eq!(
        parse_size(&docs["WasmPoolKeepResident"]).unwrap(),
        wasm_runtime::engine::KEEP_RESIDENT as u64
    );
    let hours: u64 = docs["WasmCacheMaxAge"]
        .strip_suffix('h')
        .and_then(|h| h.parse().ok())
        .expect("WasmCacheMaxAge's default in hours");
    assert_eq!(hours * 3600, DEFAULT_CACHE_MAX_AGE.as_secs());
}
