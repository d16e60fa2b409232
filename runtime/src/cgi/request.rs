//! What a command module gets for one request: CGI's argv, environment,
//! preopened directories and stdin.

use std::borrow::Cow;
use std::path::PathBuf;

use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::body::Body;
use crate::error::{chain, Code, Error, Result};
use crate::limits::Limits;
use crate::pipe::OutputSink;

/// A host directory the guest may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// Where the guest sees it.
    pub guest: String,
    /// The directory on the host.
    pub host: PathBuf,
    /// Whether the guest may only read.
    pub read_only: bool,
}

/// Gives the guest of `wasi` the directories `dirs`.
///
/// # Errors
/// [`Code::Io`] naming a directory that cannot be opened.
pub(crate) fn preopen(wasi: &mut WasiCtxBuilder, dirs: &[Preopen]) -> Result<()> {
    for d in dirs {
        let perms = if d.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        wasi.preopened_dir(&d.host, &d.guest, perms).map_err(|e| {
            Error::new(
                Code::Io,
                format!("cannot open directory {}: {}", d.host.display(), chain(&e)),
            )
        })?;
    }
    Ok(())
}

/// One environment variable: its name and value, as bytes.
pub type EnvVar<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// Everything a guest gets for one request.
///
/// The environment may borrow: it is laid out into one buffer for the guest
/// anyway (see `environ.rs`), so the C boundary lends the server's strings
/// instead of copying each variable twice on every request. It is bytes, not
/// text: a header that is not UTF-8 reaches the guest as the client sent
/// it, as it reaches a CGI program.
#[derive(Default)]
pub struct Request<'a> {
    /// `argv`, including `argv[0]`.
    pub args: Vec<String>,
    /// The environment: exactly these variables, nothing from the host.
    pub env: Vec<EnvVar<'a>>,
    /// Preopened directories.
    pub dirs: Vec<Preopen>,
    /// Export to call; `_start` when `None`.
    pub entry: Option<String>,
    /// The request body, the guest's stdin.
    pub body: Body,
    /// Where stdout goes once it outgrows what a request keeps (see
    /// `pipe.rs`); `None`: all of it is kept and returned.
    pub output: Option<Box<dyn OutputSink>>,
    /// Limits of this request.
    pub limits: Limits,
}

impl Request<'_> {
    /// Sets the environment from text pairs (tests, benchmarks).
    pub fn set_env<K: AsRef<str>, V: AsRef<str>>(&mut self, vars: &[(K, V)]) {
        self.env = vars
            .iter()
            .map(|(k, v)| {
                (
                    Cow::Owned(k.as_ref().as_bytes().to_vec()),
                    Cow::Owned(v.as_ref().as_bytes().to_vec()),
                )
            })
            .collect();
    }
}
