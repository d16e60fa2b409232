//! How a child's instance slots are spread over its engines ("shards"), and
//! which shard a request takes its slot from.
//!
//! Threads that share one engine contend on its pool's locks and reference
//! counts; threads on different CPUs that use different engines do not. So
//! a request goes to the shard of the CPU it runs on, and to another one
//! only when that shard's slots are all in use.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Most shards a child splits its pool into when not told otherwise: each
/// loads every module again, so a many-CPU host does not get one per CPU.
pub const MAX_AUTO_SHARDS: u32 = 8;

/// Shards for a pool of `slots`: one per CPU this process may run on, at
/// most [`MAX_AUTO_SHARDS`], and at least two slots in each (so a prefork
/// child, one thread and two slots, keeps a single engine).
pub fn auto_shards(slots: u32) -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    shards_for(u32::try_from(cpus).unwrap_or(u32::MAX), slots)
}

/// [`auto_shards`] on a machine whose process may run on `cpus` CPUs.
pub fn shards_for(cpus: u32, slots: u32) -> u32 {
    cpus.min(MAX_AUTO_SHARDS).min(slots / 2).max(1)
}

/// `slots` spread over `shards` shards as evenly as whole slots allow; the
/// sum is exactly `slots` (and never less than one slot per shard, so
/// `shards` is first lowered to `slots`).
pub(crate) fn split(slots: u32, shards: u32) -> Vec<u32> {
    let slots = slots.max(1);
    let shards = shards.clamp(1, slots);
    let (each, extra) = (slots / shards, slots % shards);
    (0..shards).map(|i| each + u32::from(i < extra)).collect()
}

/// The requests running in one shard, kept within its share of the slots so
/// that the shard's own pool never runs out. Aligned so that two shards'
/// counters never share a cache line.
#[repr(align(128))]
#[derive(Debug)]
pub(crate) struct SlotCounter {
    busy: AtomicU32,
    slots: u32,
    /// Slots given out so far (requests served, for `wasm-status`); on the
    /// counter's cache line, which the request writes anyway.
    taken: AtomicU64,
}

impl SlotCounter {
    pub(crate) fn new(slots: u32) -> Self {
        SlotCounter {
            busy: AtomicU32::new(0),
            slots,
            taken: AtomicU64::new(0),
        }
    }

    /// This shard's share of the slots.
    pub(crate) fn slots(&self) -> u32 {
        self.slots
    }

    /// Slots in use now.
    pub(crate) fn busy(&self) -> u32 {
        self.busy.load(Ordering::Relaxed)
    }

    /// Slots given out since the shard was created.
    pub(crate) fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Takes a slot if one is free.
    fn try_take(&self) -> bool {
        let took = self
            .busy
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |b| {
                (b < self.slots).then_some(b + 1)
            })
            .is_ok();
        if took {
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        took
    }

    /// Counts a request served by a slot that stayed taken (an instance
    /// kept for reuse).
    pub(crate) fn count_reuse(&self) {
        self.taken.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns a slot [`take`] gave out.
    pub(crate) fn give_back(&self) {
        self.busy.fetch_sub(1, Ordering::Release);
    }
}

impl AsRef<SlotCounter> for SlotCounter {
    fn as_ref(&self) -> &SlotCounter {
        self
    }
}

/// Takes a slot from `shards[home]`, or else from the next shard with one
/// free; `None` when every slot is in use. Two rounds: a thread can find
/// every shard full in one round while other requests end behind it.
pub(crate) fn take<S: AsRef<SlotCounter>>(shards: &[S], home: usize) -> Option<&S> {
    let n = shards.len();
    (0..2 * n)
        .map(|i| &shards[(home + i) % n])
        .find(|s| s.as_ref().try_take())
}

/// Which shard is home to each CPU: the CPUs this process may run on are
/// dealt out in turn, so that with affinity {0, 2, 4, 6} and four shards
/// every shard is home to one CPU (`cpu % 4` would use two).
#[derive(Debug)]
pub(crate) struct HomeShards {
    by_cpu: Vec<u16>,
    shards: usize,
}

impl HomeShards {
    /// Homes for `shards` shards over the CPUs in this process's affinity
    /// mask (every CPU by number when the mask cannot be read).
    pub(crate) fn new(shards: usize) -> Self {
        HomeShards::over(&allowed_cpus(), shards)
    }

    fn over(cpus: &[usize], shards: usize) -> Self {
        let shards = shards.max(1);
        let mut by_cpu: Vec<u16> = (0..cpus.iter().max().map_or(0, |m| m + 1))
            .map(|cpu| (cpu % shards) as u16)
            .collect();
        for (position, &cpu) in cpus.iter().enumerate() {
            by_cpu[cpu] = (position % shards) as u16;
        }
        HomeShards { by_cpu, shards }
    }

    /// The home shard of `cpu` (a CPU outside the mask, after the affinity
    /// changed, by its number).
    fn of(&self, cpu: usize) -> usize {
        self.by_cpu
            .get(cpu)
            .map_or(cpu % self.shards, |&s| s as usize)
    }

    /// The home shard of the CPU the calling thread runs on.
    pub(crate) fn current(&self) -> usize {
        if self.shards == 1 {
            return 0;
        }
        // SAFETY: no arguments and no preconditions; -1 (no answer) is
        // handled below.
        let cpu = unsafe { libc::sched_getcpu() };
        self.of(usize::try_from(cpu).unwrap_or(0))
    }
}

/// The CPUs in this process's affinity mask, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data, zero is an empty set, and the size
    // passed is the size of the set the kernel writes into.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_split_exactly() {
        assert_eq!(split(26, 8), [4, 4, 3, 3, 3, 3, 3, 3]);
        assert_eq!(split(3, 2), [2, 1]);
        assert_eq!(split(2, 5), [1, 1]);
        assert_eq!(split(0, 0), [1]);
    }

    #[test]
    fn a_shard_gives_no_more_than_its_slots() {
        let c = [SlotCounter::new(2)];
        assert!(take(&c, 0).is_some());
        assert!(take(&c, 0).is_some());
        assert!(take(&c, 0).is_none());
        c[0].give_back();
        assert_eq!((c[0].busy(), c[0].taken()), (1, 2));
        assert!(take(&c, 0).is_some());
        assert_eq!((c[0].busy(), c[0].taken()), (2, 3));
    }

    #[test]
    fn a_full_home_shard_sends_the_request_to_the_next_one() {
        let c = [
            SlotCounter::new(1),
            SlotCounter::new(1),
            SlotCounter::new(1),
        ];
        let at = |s: Option<&SlotCounter>| c.iter().position(|x| std::ptr::eq(x, s.unwrap()));
        assert_eq!(at(take(&c, 1)), Some(1));
        assert_eq!(at(take(&c, 1)), Some(2));
        assert_eq!(at(take(&c, 1)), Some(0));
        assert!(take(&c, 1).is_none());
    }

    #[test]
    fn the_allowed_cpus_are_dealt_out_over_the_shards() {
        let h = HomeShards::over(&[0, 2, 4, 6], 4);
        assert_eq!([0, 2, 4, 6].map(|c| h.of(c)), [0, 1, 2, 3]);
        // Outside the mask (or past its end): by number.
        assert_eq!(h.of(1), 1);
        assert_eq!(h.of(9), 1);
        let h = HomeShards::over(&[3, 5], 2);
        assert_eq!([3, 5].map(|c| h.of(c)), [0, 1]);
        assert!(HomeShards::new(2).current() < 2);
    }
}
