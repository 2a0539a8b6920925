//! The ready instances of one plugin, kept for reuse between calls.
//!
//! Sharded by thread: a call takes an instance from its own thread's shard
//! first and gives it back there, so an instance's memory (its store, its
//! linear memory, its stack) stays in the cache of the core that last used
//! it instead of moving between cores on every call, and two threads do not
//! contend for one lock. A thread whose shard is empty takes an instance
//! from another shard before the caller makes a new one.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Ready items, at most `capacity` in all.
pub struct Pool<T> {
    /// Each shard's items and how many it may keep (the capacities add
    /// up to the pool's).
    shards: Box<[(Mutex<Vec<T>>, usize)]>,
}

impl<T> Pool<T> {
    /// A pool that keeps at most `capacity` items (0: keeps none).
    pub fn new(capacity: usize) -> Pool<T> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let count = threads.clamp(1, 64).min(capacity.max(1));
        let (each, rest) = (capacity / count, capacity % count);
        Pool {
            shards: (0..count)
                .map(|i| (Mutex::new(Vec::new()), each + usize::from(i < rest)))
                .collect(),
        }
    }

    /// An item: the calling thread's own shard first, then any other.
    pub fn take(&self) -> Option<T> {
        let home = self.home();
        let n = self.shards.len();
        (0..n).find_map(|i| self.lock((home + i) % n).pop())
    }

    /// Keeps `item`: in the calling thread's shard, or another if that one
    /// is full; dropped if every shard is.
    pub fn give(&self, item: T) {
        let home = self.home();
        let n = self.shards.len();
        for i in 0..n {
            let at = (home + i) % n;
            let mut shard = self.lock(at);
            if shard.len() < self.shards[at].1 {
                shard.push(item);
                return;
            }
        }
    }

    /// How many items are kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        (0..self.shards.len()).map(|i| self.lock(i).len()).sum()
    }

    fn home(&self) -> usize {
        thread_slot() % self.shards.len()
    }

    fn lock(&self, i: usize) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.shards[i].0.lock().expect("instance pool poisoned")
    }
}

/// A small number for the calling thread, the same for its whole life.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
    }
    SLOT.with(|slot| {
        slot.get().unwrap_or_else(|| {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            slot.set(Some(n));
            n
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_keeps_at_most_its_capacity_and_lends_across_threads() {
        let pool = Pool::new(2);
        assert!(pool.take().is_none());
        pool.give(1);
        pool.give(2);
        pool.give(3);
        assert_eq!(pool.len(), 2);
        // Another thread finds what this one gave back.
        let taken = std::thread::scope(|s| s.spawn(|| pool.take()).join().unwrap());
        assert!(taken.is_some());
        // However many shards, never more than the capacity in all.
        let three = Pool::new(3);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..3).for_each(|i| three.give(i)));
            }
        });
        assert_eq!(three.len(), 3);
        let none: Pool<u8> = Pool::new(0);
        none.give(1);
        assert_eq!(none.len(), 0);
    }
}
