//! The layout of the server-wide metrics table in shared memory.
//!
//! The parent lays the table out once (`post_config`, in memory that
//! outlives graceful restarts, as the scoreboard does), binds each
//! configured module to an entry at every (re)start, and every child adds
//! to the entries with relaxed atomics: no lock, no system call on the
//! request path. The block is plain `u64` words, so any process that maps
//! it reads what the others wrote; nothing in it is a pointer.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Outcome, BUCKETS_US};

/// "mod_wasm" in ASCII: a block that does not start with it is not a table.
const MAGIC: u64 = 0x6d6f_645f_7761_736d;
/// The layout's version; a table of another version is not read.
const VERSION: u64 = 1;

/// Bytes of a module's location kept for display (longer ones are cut).
pub(crate) const LOCATION_MAX: usize = 256;
/// Bytes of a module's file kept for display.
pub(crate) const FILE_MAX: usize = 512;

const WORD: usize = std::mem::size_of::<u64>();
const HEADER_WORDS: usize = 8;
/// A module entry: generation it is bound in, key hash, the two texts'
/// lengths, then requests, outcomes, histogram buckets (and +Inf), time
/// sum, bytes in, bytes out, then the texts.
const COUNTER_WORDS: usize = 1 + Outcome::ALL.len() + BUCKETS_US.len() + 1 + 3;
const MODULE_WORDS: usize = 4 + COUNTER_WORDS + (LOCATION_MAX + FILE_MAX) / WORD;
/// A child entry: pid, generation, slots, busy, kept, engines, requests.
const CHILD_WORDS: usize = 8;

/// Header words.
const H_MAGIC: usize = 0;
const H_VERSION: usize = 1;
const H_MODULES: usize = 2;
const H_CHILDREN: usize = 3;
const H_GENERATION: usize = 4;
const H_CREATED: usize = 5;

/// Module entry words.
const M_BOUND: usize = 0;
const M_KEY: usize = 1;
const M_LOCATION_LEN: usize = 2;
const M_FILE_LEN: usize = 3;
const M_REQUESTS: usize = 4;
const M_OUTCOMES: usize = M_REQUESTS + 1;
const M_BUCKETS: usize = M_OUTCOMES + Outcome::ALL.len();
const M_RUN_US: usize = M_BUCKETS + BUCKETS_US.len() + 1;
const M_BYTES_IN: usize = M_RUN_US + 1;
const M_BYTES_OUT: usize = M_BYTES_IN + 1;
const M_TEXT: usize = M_BYTES_OUT + 1;

/// Child entry words.
pub(crate) const C_PID: usize = 0;
pub(crate) const C_GENERATION: usize = 1;
pub(crate) const C_SLOTS: usize = 2;
pub(crate) const C_BUSY: usize = 3;
pub(crate) const C_KEPT: usize = 4;
pub(crate) const C_ENGINES: usize = 5;
pub(crate) const C_REQUESTS: usize = 6;

/// A table laid out in a block of shared memory this process maps.
#[derive(Clone, Copy)]
pub struct Table {
    words: *const AtomicU64,
    modules: usize,
    children: usize,
}

// SAFETY: the table is only ever read and written through atomics (the
// texts are written before their entry is bound, see `bind`), so it may be
// shared between threads as between processes.
unsafe impl Send for Table {}
unsafe impl Sync for Table {}

/// One module's counters, as read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModuleCounts {
    /// The `<Location>` (or other section) it is configured in.
    pub location: String,
    /// Its file.
    pub file: String,
    /// Requests it finished.
    pub requests: u64,
    /// Of those, how many ended each way ([`Outcome::ALL`]'s order).
    pub outcomes: Vec<u64>,
    /// Requests whose time in the runtime fell in each bucket of
    /// [`BUCKETS_US`] (not cumulative), then those above the last.
    pub buckets: Vec<u64>,
    /// Their time in the runtime, microseconds.
    pub run_us: u64,
    /// Request body bytes handed to the guest.
    pub bytes_in: u64,
    /// Response bytes the guest produced.
    pub bytes_out: u64,
}

/// One child's figures, as it last published them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChildCounts {
    /// Its process id.
    pub pid: u64,
    /// The server generation it was started in.
    pub generation: u64,
    /// Instance slots of its pool.
    pub slots: u64,
    /// Slots in use (kept instances included).
    pub busy: u64,
    /// Instances kept for reuse.
    pub kept: u64,
    /// Engines (shards).
    pub engines: u64,
    /// Requests it served.
    pub requests: u64,
}

/// The size of a table for `modules` module entries and `children` child
/// entries, bytes; `None` when it would not fit in an address space.
pub fn size(modules: usize, children: usize) -> Option<usize> {
    modules
        .checked_mul(MODULE_WORDS)?
        .checked_add(children.checked_mul(CHILD_WORDS)?)?
        .checked_add(HEADER_WORDS)?
        .checked_mul(WORD)
}

/// A 64-bit FNV-1a hash of `parts`, each ended by a zero byte; never 0
/// (0 marks a free entry).
fn key_of(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.as_bytes().iter().chain(&[0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h.max(1)
}

impl Table {
    /// A table of `modules` and `children` over `len` bytes at `base`, if
    /// they fit and `base` is aligned; nothing read or written yet.
    ///
    /// # Safety
    /// As [`Table::attach`].
    unsafe fn over(base: *const u8, len: usize, modules: usize, children: usize) -> Option<Table> {
        let fits = size(modules, children).is_some_and(|need| len >= need);
        (!base.is_null() && base.align_offset(WORD) == 0 && fits).then_some(Table {
            words: base as *const AtomicU64,
            modules,
            children,
        })
    }

    /// Lays a new table out over `len` bytes at `base` (zeroed by the
    /// caller, as a fresh shared mapping is), with room for `modules`
    /// modules and `children` children; `now` is the Unix time it starts
    /// counting from.
    ///
    /// # Safety
    /// `base` is valid for `len` bytes, 8-byte aligned, zeroed, and stays
    /// mapped for as long as the table is used.
    pub unsafe fn create(
        base: *mut u8,
        len: usize,
        modules: usize,
        children: usize,
        now: u64,
    ) -> Option<Table> {
        let t = unsafe { Table::over(base, len, modules, children) }?;
        t.word(H_VERSION).store(VERSION, Ordering::Relaxed);
        t.word(H_MODULES).store(modules as u64, Ordering::Relaxed);
        t.word(H_CHILDREN).store(children as u64, Ordering::Relaxed);
        t.word(H_CREATED).store(now, Ordering::Relaxed);
        t.word(H_MAGIC).store(MAGIC, Ordering::Release);
        Some(t)
    }

    /// The table laid out at `base` by [`Table::create`] with room for
    /// `modules` and `children` (in this process or in the one it was
    /// inherited from), if it is one. The sizes come from the caller, never
    /// from the shared memory, which any child could have overwritten: a
    /// header that does not match them is refused.
    ///
    /// # Safety
    /// `base` is valid for `len` bytes, 8-byte aligned, and stays mapped
    /// for as long as the table is used.
    pub unsafe fn attach(
        base: *const u8,
        len: usize,
        modules: usize,
        children: usize,
    ) -> Option<Table> {
        let t = unsafe { Table::over(base, len, modules, children) }?;
        let matches = t.word(H_MAGIC).load(Ordering::Acquire) == MAGIC
            && t.word(H_VERSION).load(Ordering::Relaxed) == VERSION
            && t.word(H_MODULES).load(Ordering::Relaxed) == modules as u64
            && t.word(H_CHILDREN).load(Ordering::Relaxed) == children as u64;
        matches.then_some(t)
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < HEADER_WORDS + self.modules * MODULE_WORDS + self.children * CHILD_WORDS);
        // SAFETY: every index used is within the table's size, which
        // `create` and `open` checked against the mapping.
        unsafe { &*self.words.add(i) }
    }

    fn module_word(&self, entry: usize, i: usize) -> &AtomicU64 {
        self.word(HEADER_WORDS + entry * MODULE_WORDS + i)
    }

    /// Word `i` of child entry `entry`.
    pub(crate) fn child_word(&self, entry: usize, i: usize) -> &AtomicU64 {
        self.word(HEADER_WORDS + self.modules * MODULE_WORDS + entry * CHILD_WORDS + i)
    }

    /// Module entries the table has room for.
    pub fn module_capacity(&self) -> usize {
        self.modules
    }

    /// Child entries the table has room for.
    pub fn child_capacity(&self) -> usize {
        self.children
    }

    /// The generation of the configuration last bound.
    pub fn generation(&self) -> u64 {
        self.word(H_GENERATION).load(Ordering::Acquire)
    }

    /// When the table started counting, Unix seconds.
    pub fn created(&self) -> u64 {
        self.word(H_CREATED).load(Ordering::Relaxed)
    }

    /// Starts a new generation (a start or restart of the server) and
    /// binds each `(location, file)` of `modules` to an entry: the one it
    /// had in an earlier generation, whose counters it keeps, or a free
    /// one, or else one no longer configured (its counters start again).
    /// Returns each module's entry, `None` where the table is full.
    ///
    /// Only the parent calls this, between generations: children of the
    /// old generation may still be adding to entries, never binding them.
    pub fn bind(&self, modules: &[(&str, &str)]) -> Vec<Option<usize>> {
        let generation = self.word(H_GENERATION).load(Ordering::Relaxed) + 1;
        let keys: Vec<u64> = modules.iter().map(|(l, f)| key_of(&[l, f])).collect();
        let mut out = vec![None; modules.len()];
        // The same key configured twice (a file in two sections of the same
        // path, in two virtual hosts) shares its entry.
        for (i, key) in keys.iter().enumerate() {
            out[i] = (0..self.modules).find(|&e| {
                self.module_word(e, M_KEY).load(Ordering::Relaxed) == *key
                    && self.module_word(e, M_BOUND).load(Ordering::Relaxed) != 0
            });
        }
        for i in 0..modules.len() {
            if out[i].is_some() {
                continue;
            }
            if let Some(j) = (0..i).find(|&j| keys[j] == keys[i] && out[j].is_some()) {
                out[i] = out[j];
                continue;
            }
            let taken = |e: usize| out.contains(&Some(e));
            let bound = |e: usize| self.module_word(e, M_BOUND).load(Ordering::Relaxed);
            // Else the entry unconfigured longest, but never one of the last
            // generation: its children may still be counting into it.
            let free = (0..self.modules).find(|&e| bound(e) == 0).or_else(|| {
                (0..self.modules)
                    .filter(|&e| {
                        !taken(e)
                            && bound(e) + 1 < generation
                            && !keys.contains(&self.module_word(e, M_KEY).load(Ordering::Relaxed))
                    })
                    .min_by_key(|&e| bound(e))
            });
            if let Some(e) = free {
                self.claim(e, generation, keys[i], modules[i].0, modules[i].1);
                out[i] = Some(e);
            }
        }
        for e in out.iter().flatten() {
            self.module_word(*e, M_BOUND)
                .store(generation, Ordering::Release);
        }
        self.word(H_GENERATION).store(generation, Ordering::Release);
        out
    }

    /// Gives entry `e` to `key` in `generation`, with its texts and zeroed
    /// counters.
    fn claim(&self, e: usize, generation: u64, key: u64, location: &str, file: &str) {
        // Unbound first: a reader skips it while it changes.
        self.module_word(e, M_BOUND).store(0, Ordering::Release);
        for i in M_REQUESTS..M_TEXT {
            self.module_word(e, i).store(0, Ordering::Relaxed);
        }
        let location = &location.as_bytes()[..location.len().min(LOCATION_MAX)];
        let file = &file.as_bytes()[..file.len().min(FILE_MAX)];
        self.store_text(e, 0, LOCATION_MAX, location);
        self.store_text(e, LOCATION_MAX, FILE_MAX, file);
        self.module_word(e, M_LOCATION_LEN)
            .store(location.len() as u64, Ordering::Relaxed);
        self.module_word(e, M_FILE_LEN)
            .store(file.len() as u64, Ordering::Relaxed);
        self.module_word(e, M_KEY).store(key, Ordering::Relaxed);
        // Readers still on the previous generation skip it.
        self.module_word(e, M_BOUND)
            .store(generation, Ordering::Release);
    }

    /// Writes `text` (at most `room` bytes) at byte `at` of entry `e`'s
    /// texts, eight bytes to a word.
    fn store_text(&self, e: usize, at: usize, room: usize, text: &[u8]) {
        for w in 0..room / WORD {
            let mut b = [0u8; WORD];
            let from = (w * WORD).min(text.len());
            let to = ((w + 1) * WORD).min(text.len());
            b[..to - from].copy_from_slice(&text[from..to]);
            self.module_word(e, M_TEXT + (at / WORD) + w)
                .store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
    }

    fn load_text(&self, e: usize, at: usize, len: usize) -> String {
        let mut out = Vec::with_capacity(len);
        for w in 0..len.div_ceil(WORD) {
            let b = self
                .module_word(e, M_TEXT + (at / WORD) + w)
                .load(Ordering::Relaxed)
                .to_le_bytes();
            out.extend_from_slice(&b);
        }
        out.truncate(len);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Counts one finished request of entry `e`.
    pub fn record(&self, e: usize, outcome: Outcome, run_us: u64, bytes_in: u64, bytes_out: u64) {
        if e >= self.modules {
            return;
        }
        let add = |i: usize, n: u64| {
            self.module_word(e, i).fetch_add(n, Ordering::Relaxed);
        };
        add(M_REQUESTS, 1);
        add(M_OUTCOMES + outcome as usize, 1);
        let bucket = BUCKETS_US
            .iter()
            .position(|&le| run_us <= le)
            .unwrap_or(BUCKETS_US.len());
        add(M_BUCKETS + bucket, 1);
        add(M_RUN_US, run_us);
        if bytes_in > 0 {
            add(M_BYTES_IN, bytes_in);
        }
        if bytes_out > 0 {
            add(M_BYTES_OUT, bytes_out);
        }
    }

    /// The counters of every module bound in the current generation.
    pub fn modules(&self) -> Vec<ModuleCounts> {
        let generation = self.generation();
        (0..self.modules)
            .filter(|&e| {
                generation != 0
                    && self.module_word(e, M_BOUND).load(Ordering::Acquire) == generation
            })
            .map(|e| {
                let load = |i: usize| self.module_word(e, i).load(Ordering::Relaxed);
                let location_len = (load(M_LOCATION_LEN) as usize).min(LOCATION_MAX);
                let file_len = (load(M_FILE_LEN) as usize).min(FILE_MAX);
                ModuleCounts {
                    location: self.load_text(e, 0, location_len),
                    file: self.load_text(e, LOCATION_MAX, file_len),
                    requests: load(M_REQUESTS),
                    outcomes: (0..Outcome::ALL.len())
                        .map(|i| load(M_OUTCOMES + i))
                        .collect(),
                    buckets: (0..=BUCKETS_US.len())
                        .map(|i| load(M_BUCKETS + i))
                        .collect(),
                    run_us: load(M_RUN_US),
                    bytes_in: load(M_BYTES_IN),
                    bytes_out: load(M_BYTES_OUT),
                }
            })
            .collect()
    }

    /// Takes a child entry for process `pid` of `generation`: a free one,
    /// or one whose process `alive` says is gone.
    pub fn join(&self, pid: u64, generation: u64, alive: impl Fn(u64) -> bool) -> Option<usize> {
        (0..self.children).find(|&c| {
            let w = self.child_word(c, C_PID);
            let held = w.load(Ordering::Acquire);
            // Our own pid left behind by a child that died: ours now.
            let free = held == 0 || held == pid || !alive(held);
            if !free
                || w.compare_exchange(held, pid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                return false;
            }
            for i in C_GENERATION..CHILD_WORDS {
                self.child_word(c, i).store(0, Ordering::Relaxed);
            }
            self.child_word(c, C_GENERATION)
                .store(generation, Ordering::Relaxed);
            true
        })
    }

    /// Gives child entry `c` back (its process is ending).
    pub fn leave(&self, c: usize, pid: u64) {
        if c < self.children {
            let _ = self.child_word(c, C_PID).compare_exchange(
                pid,
                0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// Publishes child `c`'s figures.
    pub fn publish(&self, c: usize, counts: &ChildCounts) {
        if c >= self.children {
            return;
        }
        let set = |i: usize, v: u64| self.child_word(c, i).store(v, Ordering::Relaxed);
        set(C_SLOTS, counts.slots);
        set(C_BUSY, counts.busy);
        set(C_KEPT, counts.kept);
        set(C_ENGINES, counts.engines);
        set(C_REQUESTS, counts.requests);
    }

    /// The children holding an entry whose process `alive` says runs.
    pub fn children(&self, alive: impl Fn(u64) -> bool) -> Vec<ChildCounts> {
        (0..self.children)
            .filter_map(|c| {
                let load = |i: usize| self.child_word(c, i).load(Ordering::Relaxed);
                let pid = self.child_word(c, C_PID).load(Ordering::Acquire);
                (pid != 0 && alive(pid)).then(|| ChildCounts {
                    pid,
                    generation: load(C_GENERATION),
                    slots: load(C_SLOTS),
                    busy: load(C_BUSY),
                    kept: load(C_KEPT),
                    engines: load(C_ENGINES),
                    requests: load(C_REQUESTS),
                })
            })
            .collect()
    }
}
