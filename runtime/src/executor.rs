//! What a loaded module is served as, decided once, when a child loads it.
//!
//! A request then dispatches on the [`Executor`] instead of asking the
//! module what it exports. Every kind shares what surrounds the run: the
//! slot lease and the memory check ([`crate::runtime`]), the limits
//! ([`crate::limits`]), how a failed run is classified
//! ([`crate::outcome`]), and the status page. Today the one kind is a WASI
//! preview-1 command run CGI-style ([`crate::cgi`]) or a `wasi:http`
//! component ([`crate::http`]).

use wasmtime::Engine;

use crate::cgi;
use crate::error::{Code, Error, Result};
use crate::http;
use crate::runtime::ModuleSpec;

/// How requests run a module.
pub(crate) enum Executor {
    /// A WASI preview-1 command: CGI environment in, CGI response out.
    Command(cgi::Command),
    /// A `wasi:http/proxy` component: an HTTP request in, its response
    /// streamed out.
    Http(http::Proxy),
}

/// The kinds of [`Executor`], as the C side is told them
/// (`wasm_rt_module_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Kind {
    /// See [`Executor::Command`].
    Command = 1,
    /// See [`Executor::Http`].
    Http = 2,
}

/// A module ready to serve requests in one engine.
pub struct Loaded {
    /// How logs refer to the module.
    pub name: String,
    /// Bytes of linear memory the module starts with: a `WasmMaxMemory`
    /// below it fails every request, which is said before a slot is taken.
    pub min_memory: u64,
    pub(crate) executor: Executor,
}

impl Loaded {
    /// Loads `spec`, a module of `kind`, into `engine`, with the linkers of
    /// `linkers`.
    pub(crate) fn load(
        engine: &Engine,
        linkers: &Linkers,
        spec: &ModuleSpec,
        kind: Kind,
    ) -> Result<Loaded> {
        let (executor, min_memory) = match (kind, &linkers.http) {
            (Kind::Command, _) => {
                let (c, m) = cgi::Command::load(engine, &linkers.command, spec)?;
                (Executor::Command(c), m)
            }
            (Kind::Http, Some(linker)) => {
                let (p, m) = http::Proxy::load(engine, linker, spec)?;
                (Executor::Http(p), m)
            }
            (Kind::Http, None) => {
                return Err(Error::new(
                    Code::Internal,
                    format!("{}: no component linker was made", spec.name),
                ))
            }
        };
        Ok(Loaded {
            name: spec.name.clone(),
            min_memory,
            executor,
        })
    }

    /// The kind of executor this module has.
    pub fn kind(&self) -> Kind {
        match self.executor {
            Executor::Command(_) => Kind::Command,
            Executor::Http(_) => Kind::Http,
        }
    }

    /// The command module this is, for a CGI request.
    pub(crate) fn command(&self) -> Result<&cgi::Command> {
        match &self.executor {
            Executor::Command(c) => Ok(c),
            Executor::Http(_) => Err(self.not_a("a command module")),
        }
    }

    /// The component this is, for an HTTP request.
    pub(crate) fn proxy(&self) -> Result<&http::Proxy> {
        match &self.executor {
            Executor::Http(p) => Ok(p),
            Executor::Command(_) => Err(self.not_a("a wasi:http component")),
        }
    }

    fn not_a(&self, what: &str) -> Error {
        Error::new(
            Code::InvalidArgument,
            format!("{} is not {what}", self.name),
        )
    }

    /// Whether the guest can read an environment: one that cannot need not
    /// be given one.
    pub fn reads_env(&self) -> bool {
        match &self.executor {
            Executor::Command(c) => c.reads_env,
            // Its environment is WasmEnv's alone, not the CGI variables.
            Executor::Http(_) => false,
        }
    }
}

/// The host functions of each kind of module, made once per engine.
pub(crate) struct Linkers {
    command: wasmtime::Linker<cgi::Host>,
    /// Only when a component is configured: it defines all of WASI 0.2
    /// and `wasi:http`, work a child of command modules need not do.
    http: Option<wasmtime::component::Linker<http::HttpHost>>,
}

impl Linkers {
    /// The linkers for `engine` and modules of `kinds`.
    pub(crate) fn new(engine: &Engine, kinds: &[Kind]) -> Result<Linkers> {
        let http = if kinds.contains(&Kind::Http) {
            Some(http::host::linker(engine)?)
        } else {
            None
        };
        Ok(Linkers {
            command: cgi::host::linker(engine)?,
            http,
        })
    }
}
