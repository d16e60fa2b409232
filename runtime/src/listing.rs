//! What `mod_wasm-precompile -f httpd.conf` compiles, as Apache's own
//! parser reads the configuration: the command runs `httpd -t -D
//! MOD_WASM_PRECOMPILE_LIST`, and the shim, seeing that define in a
//! configuration test, prints the modules and the cache directory instead
//! of compiling them (`mod_wasm_c/mod_wasm.c`). So `Include`s, `<IfDefine>`,
//! `<IfModule>`, ServerRoot-relative paths and the default `WasmCacheDir`
//! are exactly the server's.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::Command;

/// The define that asks the shim for the listing.
pub const DEFINE: &str = "MOD_WASM_PRECOMPILE_LIST";
/// The first word of every line of the listing.
const MARK: &str = "mod_wasm-precompile";

/// A configuration's modules and cache, as its server would use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// `WasmCacheDir`, resolved (or the server's default).
    pub cache_dir: PathBuf,
    /// Every `WasmModule`, in configuration order.
    pub modules: Vec<Listed>,
}

/// One `WasmModule` of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The module file, resolved against ServerRoot.
    pub path: PathBuf,
    /// `WasmTrapUnknownImports On` where it is configured.
    pub trap_unknown_imports: bool,
    /// `file:line` of the directive, for messages.
    pub defined_at: String,
}

/// Runs `httpd` (a command and its arguments, such as `apache2ctl`) with
/// `-t -D MOD_WASM_PRECOMPILE_LIST` and `args` (`-f`, `-d`, `-C`, `-D` as
/// the operator passes them to Apache), and reads the listing.
///
/// # Errors
/// What Apache said when it cannot run or the configuration is invalid,
/// or why its output is not a listing (mod_wasm not loaded by it).
pub fn read(httpd: &[OsString], args: &[OsString]) -> Result<Listing, String> {
    let (program, first) = httpd
        .split_first()
        .ok_or_else(|| "no httpd command".to_owned())?;
    let out = Command::new(program)
        .args(first)
        .args(["-t", "-D", DEFINE])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
    let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        return Err(format!(
            "{} -t refused the configuration ({}): {said}",
            program.to_string_lossy(),
            out.status
        ));
    }
    parse(&out.stdout).map_err(|e| {
        format!(
            "{e}; is mod_wasm loaded by this configuration (LoadModule wasm_module)? \
             Apache said: {said}"
        )
    })
}

/// Parses the shim's listing; lines that are not its own are ignored (other
/// modules may print on a configuration test).
///
/// # Errors
/// A malformed line of the listing, or no listing at all.
pub fn parse(stdout: &[u8]) -> Result<Listing, String> {
    let mut cache_dir = None;
    let mut modules = Vec::new();
    let mut end = None;
    for line in stdout.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        let mut words = line.split(' ');
        if words.next() != Some(MARK) {
            continue;
        }
        let bad = || format!("malformed line in mod_wasm's listing: {line}");
        match words.next() {
            Some("cache-dir") if cache_dir.is_none() => {
                cache_dir = Some(PathBuf::from(unhex(words.next().ok_or_else(bad)?)?));
            }
            Some("end") if end.is_none() => {
                end = Some(
                    words
                        .next()
                        .and_then(|n| n.parse::<usize>().ok())
                        .ok_or_else(bad)?,
                );
            }
            Some("module") => {
                let path = PathBuf::from(unhex(words.next().ok_or_else(bad)?)?);
                let trap_unknown_imports = match words.next() {
                    Some("0") => false,
                    Some("1") => true,
                    _ => return Err(bad()),
                };
                let defined_at = unhex(words.next().ok_or_else(bad)?)?
                    .to_string_lossy()
                    .into_owned();
                modules.push(Listed {
                    path,
                    trap_unknown_imports,
                    defined_at,
                });
            }
            _ => return Err(bad()),
        }
    }
    let cache_dir = cache_dir.ok_or_else(|| "Apache printed no mod_wasm listing".to_owned())?;
    // A line cut or hidden by another module's output would otherwise pass
    // as a module that is not configured.
    if end != Some(modules.len()) {
        return Err(format!(
            "mod_wasm's listing is incomplete: {} module line(s) read, the listing says {}",
            modules.len(),
            end.map_or("nothing".to_owned(), |n| n.to_string())
        ));
    }
    if cache_dir.as_os_str().is_empty() {
        return Err("mod_wasm's listing names no cache directory".into());
    }
    Ok(Listing { cache_dir, modules })
}

fn unhex(text: &str) -> Result<OsString, String> {
    let bad = || format!("not hexadecimal: {text}");
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    Ok(OsString::from_vec(bytes))
}

/// The command that runs Apache as `apachectl` does: Debian's
/// `apache2ctl` (which reads `/etc/apache2/envvars`), then `apachectl`,
/// `apache2` and `httpd`, each looked up in `PATH` and the usual `sbin`
/// directories.
pub fn default_httpd() -> Option<OsString> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Absolute directories only: a relative one would find a program in
    // whatever directory the command runs from.
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    ["apache2ctl", "apachectl", "apache2", "httpd"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)))
        .find(|p| p.is_file())
        .map(|p| OsStr::new(&p).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_s_listing_is_read_and_other_lines_are_ignored() {
        let text = b"Syntax OK\nmod_wasm-precompile cache-dir 2f632f6420780a\n\
            mod_wasm-precompile module 2f612e7761736d 1 632e636f6e663a33\n\
            mod_wasm-precompile module 2f622e7761736d 0 632e636f6e663a37\n\
            mod_wasm-precompile end 2\n";
        let l = parse(text).unwrap();
        assert_eq!(l.cache_dir, PathBuf::from("/c/d x\n"));
        assert_eq!(l.modules.len(), 2);
        assert_eq!(l.modules[0].path, PathBuf::from("/a.wasm"));
        assert!(l.modules[0].trap_unknown_imports);
        assert_eq!(l.modules[1].defined_at, "c.conf:7");
        assert!(!l.modules[1].trap_unknown_imports);
    }

    #[test]
    fn a_broken_listing_is_refused() {
        assert!(parse(b"Syntax OK\n")
            .unwrap_err()
            .contains("no mod_wasm listing"));
        assert!(parse(b"mod_wasm-precompile module 2f 2 00\n").is_err());
        assert!(parse(b"mod_wasm-precompile cache-dir 2g\n").is_err());
        assert!(parse(b"mod_wasm-precompile cache-dir 2\n").is_err());
        assert!(parse(b"mod_wasm-precompile what\n").is_err());
        // A module line another module's output cut off its mark.
        let cut = b"mod_wasm-precompile cache-dir 2f\nnoisemod_wasm-precompile module 2f 0 61\n\
            mod_wasm-precompile end 1\n";
        assert!(parse(cut).unwrap_err().contains("incomplete"));
        let twice = b"mod_wasm-precompile cache-dir 2f\nmod_wasm-precompile cache-dir 2f\n\
            mod_wasm-precompile end 0\n";
        assert!(parse(twice).is_err());
        assert!(parse(b"mod_wasm-precompile cache-dir 2f\n")
            .unwrap_err()
            .contains("incomplete"));
    }
}
