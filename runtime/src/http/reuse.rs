//! Instances kept between requests (`WasmInstanceReuse`).
//!
//! A component instance that served a request completely may serve more,
//! up to the section's `WasmInstanceReuse`, in the same store: its memory,
//! globals and open files carry over, which is what makes an interpreter
//! that imports its application once cheap to call again. Between requests
//! it waits on its shard's [`Shelf`], holding the slot it was leased (the
//! pool's memory and instance stay allocated to it), until a request of the
//! same module and the same configuration takes it, or a request that finds
//! no free slot evicts it.
//!
//! What the guest sees through `wasi:cli` (arguments, environment,
//! directories) and its limits are part of the store, so an instance is
//! only handed to a request configured exactly as the one it was created
//! for, in the same virtual host and section ([`ReuseKey`]); the request
//! itself (head, body, client address) is new each time, as `wasi:http`
//! hands it over.

use std::sync::Mutex;

use wasmtime::Store;

use super::component::Bindings;
use super::host::HttpHost;
use super::request::Request;
use crate::cgi::Preopen;
use crate::pipe::CappedPipe;

/// An instance waiting for its next request.
pub(crate) struct Kept {
    /// The configuration it was created for.
    pub(crate) key: ReuseKey,
    /// Its store, with the guest's state.
    pub(crate) store: Store<HttpHost>,
    /// Its exports.
    pub(crate) bindings: Bindings,
    /// Where its stdout and stderr go (emptied after each request).
    pub(crate) log: CappedPipe,
    /// Requests it has served.
    pub(crate) served: u32,
}

/// What an instance's store was made from: the module and the part of the
/// request that comes from the configuration.
#[derive(Debug, PartialEq)]
pub(crate) struct ReuseKey {
    index: usize,
    scope: String,
    args: Vec<String>,
    env: Vec<(Vec<u8>, Vec<u8>)>,
    dirs: Vec<Preopen>,
    max_memory: usize,
    max_open_files: u32,
    allow_outbound: Vec<String>,
}

impl ReuseKey {
    /// The key of a store made for `req` to module `index`.
    pub(crate) fn of(index: usize, req: &Request<'_>) -> ReuseKey {
        ReuseKey {
            index,
            scope: req.reuse_scope.to_string(),
            args: req.args.clone(),
            env: req
                .env
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
            dirs: req.dirs.clone(),
            max_memory: req.limits.max_memory,
            max_open_files: req.limits.max_open_files,
            allow_outbound: req.allow_outbound.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// Whether a store made for this key may serve `req` to module `index`
    /// (compared in place: this runs on every request that reuses).
    fn fits(&self, index: usize, req: &Request<'_>) -> bool {
        self.index == index
            && self.scope == req.reuse_scope
            && self.max_memory == req.limits.max_memory
            && self.max_open_files == req.limits.max_open_files
            && self.args == req.args
            && self.env.len() == req.env.len()
            && self
                .env
                .iter()
                .zip(&req.env)
                .all(|((k, v), (rk, rv))| k[..] == rk[..] && v[..] == rv[..])
            && self.dirs == req.dirs
            && self.allow_outbound == req.allow_outbound
    }
}

/// The instances one shard keeps, oldest first; each holds one of the
/// shard's slots.
#[derive(Default)]
pub(crate) struct Shelf(Mutex<Vec<Kept>>);

impl Shelf {
    /// Takes the most recently kept instance that may serve `req` to module
    /// `index` (the most recent: its memory is the likeliest to be in the
    /// CPU's caches).
    pub(crate) fn take(&self, index: usize, req: &Request<'_>) -> Option<Kept> {
        let mut kept = self.lock();
        let at = kept.iter().rposition(|k| k.key.fits(index, req))?;
        Some(kept.remove(at))
    }

    /// Keeps `kept` for a later request.
    pub(crate) fn put(&self, kept: Kept) {
        self.lock().push(kept);
    }

    /// Takes the instance kept longest, to free its slot.
    pub(crate) fn evict(&self) -> Option<Kept> {
        let mut kept = self.lock();
        (!kept.is_empty()).then(|| kept.remove(0))
    }

    /// Instances kept now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        // A panic while the list was held cannot leave it inconsistent:
        // every operation on it is a single push or remove.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
