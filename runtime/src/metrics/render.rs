//! The metrics table read out: `wasm-status` text and JSON, the
//! Prometheus text exposition format, and mod_status's section (HTML and
//! `?auto` lines).

use std::fmt::Write;

use super::{ChildCounts, ModuleCounts, Outcome, BUCKETS_US};

/// What a reader saw of the table, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The configuration generation the modules are bound in.
    pub generation: u64,
    /// When the table started counting, Unix seconds.
    pub created: u64,
    /// Each configured module's counters.
    pub modules: Vec<ModuleCounts>,
    /// Each running child's figures.
    pub children: Vec<ChildCounts>,
}

/// The forms the metrics are read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `Key: value` lines, as `wasm-status` writes them.
    Text,
    /// One JSON object (`wasm-status?json`).
    Json,
    /// Prometheus' text exposition format (`wasm-metrics`).
    Prometheus,
    /// A section of mod_status's HTML page.
    StatusHtml,
    /// `Wasm...: value` lines of mod_status's `?auto` page.
    StatusAuto,
}

/// `snap` in form `format`.
pub fn render(snap: &Snapshot, format: Format) -> String {
    let mut out = String::new();
    match format {
        Format::Text => text(snap, &mut out),
        Format::Json => json(snap, &mut out),
        Format::Prometheus => prometheus(snap, &mut out),
        Format::StatusHtml => status_html(snap, &mut out),
        Format::StatusAuto => status_auto(snap, &mut out),
    }
    out
}

/// The file name of `path` (what the `module` label shows).
fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn sum(snap: &Snapshot, f: impl Fn(&ChildCounts) -> u64) -> u64 {
    snap.children.iter().map(f).sum()
}

// Writing to a String cannot fail: the results of write! are ignored.

fn text(snap: &Snapshot, out: &mut String) {
    let _ = writeln!(out, "ServerGeneration: {}", snap.generation);
    let _ = writeln!(out, "ServerCountingSince: {}", snap.created);
    let _ = writeln!(out, "ServerChildren: {}", snap.children.len());
    let _ = writeln!(out, "ServerSlots: {}", sum(snap, |c| c.slots));
    let _ = writeln!(out, "ServerBusy: {}", sum(snap, |c| c.busy));
    let _ = writeln!(out, "ServerKept: {}", sum(snap, |c| c.kept));
    for c in &snap.children {
        let _ = writeln!(
            out,
            "Child: pid={} generation={} slots={} busy={} kept={} engines={} requests={}",
            c.pid, c.generation, c.slots, c.busy, c.kept, c.engines, c.requests
        );
    }
    for m in &snap.modules {
        let _ = write!(
            out,
            "Module: location={} file={} requests={}",
            m.location, m.file, m.requests
        );
        for (o, n) in Outcome::ALL.iter().zip(&m.outcomes) {
            let _ = write!(out, " {}={n}", o.name());
        }
        let _ = writeln!(
            out,
            " runtime_us={} request_bytes={} response_bytes={}",
            m.run_us, m.bytes_in, m.bytes_out
        );
    }
}

/// `s` as a JSON string.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json(snap: &Snapshot, out: &mut String) {
    let _ = write!(
        out,
        "{{\"generation\":{},\"counting_since\":{},\"children\":[",
        snap.generation, snap.created
    );
    for (i, c) in snap.children.iter().enumerate() {
        let _ = write!(
            out,
            "{}{{\"pid\":{},\"generation\":{},\"slots\":{},\"busy\":{},\"kept\":{},\"engines\":{},\"requests\":{}}}",
            if i > 0 { "," } else { "" },
            c.pid, c.generation, c.slots, c.busy, c.kept, c.engines, c.requests
        );
    }
    out.push_str("],\"modules\":[");
    for (i, m) in snap.modules.iter().enumerate() {
        let _ = write!(
            out,
            "{}{{\"location\":{},\"file\":{},\"requests\":{},\"outcomes\":{{",
            if i > 0 { "," } else { "" },
            json_str(&m.location),
            json_str(&m.file),
            m.requests
        );
        for (j, (o, n)) in Outcome::ALL.iter().zip(&m.outcomes).enumerate() {
            let _ = write!(out, "{}\"{}\":{n}", if j > 0 { "," } else { "" }, o.name());
        }
        out.push_str("},\"runtime_us_buckets\":[");
        for (j, n) in m.buckets.iter().enumerate() {
            let le = BUCKETS_US
                .get(j)
                .map_or("null".to_string(), |b| b.to_string());
            let _ = write!(out, "{}[{le},{n}]", if j > 0 { "," } else { "" });
        }
        let _ = write!(
            out,
            "],\"runtime_us\":{},\"request_bytes\":{},\"response_bytes\":{}}}",
            m.run_us, m.bytes_in, m.bytes_out
        );
    }
    out.push_str("]}\n");
}

/// `s` as a Prometheus label value.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn prometheus(snap: &Snapshot, out: &mut String) {
    // The file's name, or its whole path where two modules of the same
    // location share a name (two virtual hosts): a series must be unique.
    let module = |m: &'_ ModuleCounts| -> String {
        let shared = snap
            .modules
            .iter()
            .filter(|o| o.location == m.location && base_name(&o.file) == base_name(&m.file))
            .count()
            > 1;
        match shared {
            true => m.file.clone(),
            false => base_name(&m.file).to_string(),
        }
    };
    let labels = |m: &ModuleCounts| {
        format!(
            "location=\"{}\",module=\"{}\"",
            label(&m.location),
            label(&module(m))
        )
    };
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    family(
        out,
        "mod_wasm_requests_total",
        "counter",
        "Requests a module finished, by how they ended.",
    );
    for m in &snap.modules {
        for (o, n) in Outcome::ALL.iter().zip(&m.outcomes) {
            let _ = writeln!(
                out,
                "mod_wasm_requests_total{{{},outcome=\"{}\"}} {n}",
                labels(m),
                o.name()
            );
        }
    }
    family(
        out,
        "mod_wasm_runtime_seconds",
        "histogram",
        "Time requests spent in the WebAssembly runtime.",
    );
    for m in &snap.modules {
        let l = labels(m);
        let mut cumulative = 0;
        for (j, n) in m.buckets.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS_US
                .get(j)
                .map_or("+Inf".to_string(), |&b| (b as f64 / 1e6).to_string());
            let _ = writeln!(
                out,
                "mod_wasm_runtime_seconds_bucket{{{l},le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "mod_wasm_runtime_seconds_sum{{{l}}} {}",
            m.run_us as f64 / 1e6
        );
        let _ = writeln!(out, "mod_wasm_runtime_seconds_count{{{l}}} {cumulative}");
    }
    for (name, help, get) in [
        (
            "mod_wasm_request_bytes_total",
            "Request body bytes handed to a module.",
            (|m: &ModuleCounts| m.bytes_in) as fn(&ModuleCounts) -> u64,
        ),
        (
            "mod_wasm_response_bytes_total",
            "Response bytes a module produced.",
            |m: &ModuleCounts| m.bytes_out,
        ),
    ] {
        family(out, name, "counter", help);
        for m in &snap.modules {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(m), get(m));
        }
    }
    family(
        out,
        "mod_wasm_children",
        "gauge",
        "Apache children running a WebAssembly runtime.",
    );
    let _ = writeln!(out, "mod_wasm_children {}", snap.children.len());
    for (name, help, get) in [
        (
            "mod_wasm_slots",
            "Instance slots of a child's pool.",
            (|c: &ChildCounts| c.slots) as fn(&ChildCounts) -> u64,
        ),
        (
            "mod_wasm_busy_slots",
            "Slots in use, kept instances included.",
            |c: &ChildCounts| c.busy,
        ),
        (
            "mod_wasm_kept_instances",
            "Instances kept for reuse (WasmInstanceReuse).",
            |c: &ChildCounts| c.kept,
        ),
        (
            "mod_wasm_engines",
            "Engines (shards) of a child.",
            |c: &ChildCounts| c.engines,
        ),
    ] {
        family(out, name, "gauge", help);
        for c in &snap.children {
            let _ = writeln!(out, "{name}{{pid=\"{}\"}} {}", c.pid, get(c));
        }
    }
    family(
        out,
        "mod_wasm_counting_since_seconds",
        "gauge",
        "When the counters started (Unix time): the server's first start.",
    );
    let _ = writeln!(out, "mod_wasm_counting_since_seconds {}", snap.created);
}

/// `s` escaped for HTML text.
fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn status_html(snap: &Snapshot, out: &mut String) {
    let _ = writeln!(
        out,
        "<h2>mod_wasm</h2>\n<p>{} children, {} of {} instance slots busy, {} instances kept</p>",
        snap.children.len(),
        sum(snap, |c| c.busy),
        sum(snap, |c| c.slots),
        sum(snap, |c| c.kept)
    );
    out.push_str("<table border=\"1\"><tr><th>Location</th><th>Module</th><th>Requests</th>");
    for o in Outcome::ALL.iter().skip(1) {
        let _ = write!(out, "<th>{}</th>", o.name());
    }
    out.push_str("<th>Mean ms</th></tr>\n");
    for m in &snap.modules {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            html(&m.location),
            html(&m.file),
            m.requests
        );
        for n in m.outcomes.iter().skip(1) {
            let _ = write!(out, "<td>{n}</td>");
        }
        let mean = match m.requests {
            0 => 0.0,
            n => m.run_us as f64 / n as f64 / 1e3,
        };
        let _ = writeln!(out, "<td>{mean:.3}</td></tr>");
    }
    out.push_str("</table>\n");
}

fn status_auto(snap: &Snapshot, out: &mut String) {
    let total = |f: &dyn Fn(&ModuleCounts) -> u64| snap.modules.iter().map(f).sum::<u64>();
    let _ = writeln!(out, "WasmChildren: {}", snap.children.len());
    let _ = writeln!(out, "WasmSlots: {}", sum(snap, |c| c.slots));
    let _ = writeln!(out, "WasmBusySlots: {}", sum(snap, |c| c.busy));
    let _ = writeln!(out, "WasmKeptInstances: {}", sum(snap, |c| c.kept));
    let _ = writeln!(out, "WasmRequests: {}", total(&|m| m.requests));
    for (i, o) in Outcome::ALL.iter().enumerate() {
        let name: String = o
            .name()
            .split('_')
            .map(|w| w[..1].to_uppercase() + &w[1..])
            .collect();
        let _ = writeln!(out, "Wasm{name}: {}", total(&|m| m.outcomes[i]));
    }
    let _ = writeln!(
        out,
        "WasmRuntimeSeconds: {}",
        total(&|m| m.run_us) as f64 / 1e6
    );
}
