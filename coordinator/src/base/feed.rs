//! Committed writes of chosen trees, published in commit order to in-process subscribers: what
//! lets a reader keep running sums over stored records (a rollout's evidence) by reading what
//! changed since its last look instead of scanning the history every time.
//!
//! A writer commits and publishes under one lock ([`Feed::commit`]), so subscribers receive
//! changes in commit order. A reader that must first read what is already stored subscribes,
//! then reads the records in chunks, each under the same lock ([`Feed::locked`]), draining its
//! subscription at each chunk: a change drained there was committed between two chunks, so its
//! key is either behind the read (the read missed it: apply it) or ahead of it (the read will
//! see it: skip it). Read and changes together then count every record exactly once, while
//! writers wait at most one chunk. A subscription holds at most [`CAPACITY`] changes; one that
//! falls further behind is marked overflowed and its reader starts again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};

/// Changes a subscriber may fall behind by before it is marked overflowed (a rollout engine
/// reads its changes every second; a 10,000-device fleet writes about 1,000 a second, each
/// change a few hundred bytes — so this bounds a stalled reader's backlog near 50 MB).
pub const CAPACITY: usize = 100_000;

/// One committed write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub tree: &'static str,
    pub key: Vec<u8>,
    /// The value it replaced (`None`: the key was new).
    pub before: Option<Vec<u8>>,
    pub after: Vec<u8>,
}

struct Subscriber {
    tx: SyncSender<Change>,
    overflowed: Arc<AtomicBool>,
    /// The trees whose changes it gets.
    trees: Vec<&'static str>,
}

/// The store's feed of committed changes; one per open database.
#[derive(Default)]
pub struct Feed {
    /// Held while a write commits and publishes, and while a reader reads a chunk.
    subscribers: Mutex<Vec<Subscriber>>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").finish_non_exhaustive()
    }
}

/// The subscription fell more than [`CAPACITY`] changes behind: changes were lost to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the change subscription fell more than {CAPACITY} changes behind")]
pub struct Overflowed;

/// Changes published after [`Feed::subscribe`]; unsubscribes when dropped.
#[derive(Debug)]
pub struct Subscription {
    rx: Receiver<Change>,
    overflowed: Arc<AtomicBool>,
}

impl Subscription {
    /// Every change received since the last drain, in commit order.
    pub fn drain(&self) -> Result<Vec<Change>, Overflowed> {
        let changes: Vec<Change> = self.rx.try_iter().collect();
        if self.overflowed.load(Ordering::Acquire) {
            return Err(Overflowed);
        }
        Ok(changes)
    }
}

impl Feed {
    fn lock(&self) -> MutexGuard<'_, Vec<Subscriber>> {
        self.subscribers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `write` (which commits and answers the changes it committed) and publishes the
    /// changes, with no other write or locked read in between.
    pub fn commit<T>(&self, write: impl FnOnce() -> (T, Vec<Change>)) -> T {
        let mut subscribers = self.lock();
        let (out, changes) = write();
        if !subscribers.is_empty() && !changes.is_empty() {
            subscribers.retain(|s| {
                changes.iter().filter(|c| s.trees.contains(&c.tree)).all(|c| match s.tx.try_send(c.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        s.overflowed.store(true, Ordering::Release);
                        false
                    }
                    Err(TrySendError::Disconnected(_)) => false,
                })
            });
        }
        out
    }

    /// Runs `read` with no write committing meanwhile.
    pub fn locked<T>(&self, read: impl FnOnce() -> T) -> T {
        let _g = self.lock();
        read()
    }

    /// Subscribes to every change of `trees` committed from now on.
    pub fn subscribe(&self, trees: &[&'static str]) -> Subscription {
        let (tx, rx) = sync_channel(CAPACITY);
        let overflowed = Arc::new(AtomicBool::new(false));
        self.lock().push(Subscriber { tx, overflowed: overflowed.clone(), trees: trees.to_vec() });
        Subscription { rx, overflowed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: u8) -> Change {
        Change { tree: "t", key: vec![key], before: None, after: vec![key] }
    }

    #[test]
    fn subscribers_get_their_trees_committed_changes_in_commit_order_and_only_after_subscribing() {
        let feed = Feed::default();
        feed.commit(|| ((), vec![change(0)]));
        let sub = feed.subscribe(&["t"]);
        let other = feed.subscribe(&["u"]);
        assert_eq!(feed.commit(|| (7, vec![change(1), change(2)])), 7);
        feed.commit(|| ((), vec![change(3)]));
        let keys: Vec<u8> = sub.drain().unwrap().into_iter().map(|c| c.key[0]).collect();
        assert_eq!(keys, [1, 2, 3]);
        assert!(sub.drain().unwrap().is_empty());
        assert!(other.drain().unwrap().is_empty(), "another tree's subscriber gets none of them");
    }

    #[test]
    fn a_dropped_subscription_is_forgotten_and_a_full_one_says_it_overflowed() {
        let feed = Feed::default();
        drop(feed.subscribe(&["t"]));
        feed.commit(|| ((), vec![change(1)]));
        assert!(feed.lock().is_empty(), "the dropped subscriber is removed at the next publish");
        let sub = feed.subscribe(&["t"]);
        for i in 0..=CAPACITY {
            feed.commit(|| ((), vec![change((i % 250) as u8)]));
        }
        assert_eq!(sub.drain(), Err(Overflowed));
        assert!(feed.lock().is_empty());
    }
}
