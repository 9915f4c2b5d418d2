//! The work queue of the sync engine: deduplicating, and fair across virtual
//! namespaces. Keys wait in one FIFO per namespace; `pop` serves the
//! namespaces round-robin, so a namespace with ten thousand pending keys
//! delays another namespace's key by at most one turn per namespace.
//!
//! A key is never handed to two workers at once: adding a key that is being
//! reconciled marks it dirty, and `done` queues it again (at the head of its
//! namespace if it was added with [`FairQueue::add_first`] meanwhile).
//!
//! The periodic resync's keys wait in a lane of their own
//! ([`FairQueue::add_background`]), served only when no other key waits: at
//! 10,000 pods a resync queues 10,000 forced writes at once, and in the
//! common lane a pod created then waited behind them for minutes. A key
//! queued normally meanwhile leaves that lane and takes its normal turn.
//!
//! Keys asked for again later (a token to renew, a backoff) wait in
//! [`Later`]: one deadline per key, served by one timer.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::Hash;

use tokio::time::Instant;

/// A key with the namespace it is fair within.
pub trait Keyed: Clone + Eq + Hash {
    /// The fairness group (the virtual namespace).
    fn group(&self) -> &str;
}

impl Keyed for crate::translate::VirtualKey {
    fn group(&self) -> &str {
        &self.namespace
    }
}

/// The queue itself (no locking: the engine wraps it in a mutex).
#[derive(Debug)]
pub struct FairQueue<K: Keyed> {
    ring: VecDeque<String>,
    pending: HashMap<String, Fifo<K>>,
    /// Keys waiting in a FIFO, each with the ticket of its live entry there.
    queued: HashMap<K, u64>,
    next_ticket: u64,
    in_flight: HashSet<K>,
    /// Changed while in flight; `true`: it goes first when done.
    dirty: HashMap<K, bool>,
    /// The resync lane, in order; a key taken out of [`Self::in_background`]
    /// (queued normally meanwhile) is skipped when it comes up.
    background: VecDeque<K>,
    in_background: HashSet<K>,
}

/// One namespace's keys in order. A key moved to the head leaves its old
/// entry behind, skipped when it comes up (its ticket is no longer the
/// key's): moving a key is O(1), where finding and removing it in a FIFO
/// of thousands was a scan and a shift on every status event of a burst.
#[derive(Debug)]
struct Fifo<K> {
    entries: VecDeque<(u64, K)>,
    /// Entries whose ticket is their key's (at most one per key).
    live: usize,
}

impl<K> Default for Fifo<K> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            live: 0,
        }
    }
}

impl<K: Keyed> Default for FairQueue<K> {
    fn default() -> Self {
        Self {
            ring: VecDeque::new(),
            pending: HashMap::new(),
            queued: HashMap::new(),
            next_ticket: 0,
            in_flight: HashSet::new(),
            dirty: HashMap::new(),
            background: VecDeque::new(),
            in_background: HashSet::new(),
        }
    }
}

impl<K: Keyed> FairQueue<K> {
    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Adds `key` unless it is already waiting; a key being reconciled is
    /// queued again when it is done.
    pub fn add(&mut self, key: K) {
        self.in_background.remove(&key);
        if self.in_flight.contains(&key) {
            self.dirty.entry(key).or_insert(false);
            return;
        }
        if self.queued.contains_key(&key) {
            return;
        }
        let ticket = self.ticket();
        self.queued.insert(key.clone(), ticket);
        let group = key.group().to_owned();
        let fifo = self.pending.entry(group.clone()).or_default();
        if fifo.live == 0 {
            self.ring.push_back(group);
        }
        fifo.live += 1;
        fifo.entries.push_back((ticket, key));
    }

    /// Adds `key` at the head of its namespace's FIFO (a namespace with
    /// nothing waiting goes first in the turn order): for follow-up work such
    /// as status coming up from the host, which should not wait behind a
    /// burst of creations. A key already waiting moves to the head (the
    /// echo of the syncer's own virtual write queues it at the tail first).
    pub fn add_first(&mut self, key: K) {
        self.in_background.remove(&key);
        if self.in_flight.contains(&key) {
            self.dirty.insert(key, true);
            return;
        }
        let ticket = self.ticket();
        let group = key.group().to_owned();
        let fifo = self.pending.entry(group.clone()).or_default();
        // Already waiting: its old entry is left behind, no longer live.
        if self.queued.insert(key.clone(), ticket).is_none() {
            // Its namespace is in the turn order exactly while it has keys
            // waiting.
            if fifo.live == 0 {
                self.ring.push_front(group);
            }
            fifo.live += 1;
        }
        fifo.entries.push_front((ticket, key));
    }

    /// Adds `key` to the resync lane, unless it is waiting or being
    /// reconciled already (that reconcile, or the one after it, serves it).
    pub fn add_background(&mut self, key: K) {
        if self.queued.contains_key(&key) || self.in_flight.contains(&key) {
            return;
        }
        if self.in_background.insert(key.clone()) {
            self.background.push_back(key);
        }
    }

    /// The next key, taking namespaces in turn, then the resync lane; it is
    /// in flight until `done`. (A namespace is in the turn order exactly
    /// while it has keys waiting.)
    pub fn pop(&mut self) -> Option<K> {
        if self.ring.is_empty() {
            while let Some(key) = self.background.pop_front() {
                if self.in_background.remove(&key) {
                    self.in_flight.insert(key.clone());
                    return Some(key);
                }
            }
            return None;
        }
        let group = self.ring.pop_front()?;
        let fifo = self.pending.get_mut(&group)?;
        let key = loop {
            let (ticket, key) = fifo.entries.pop_front()?;
            if self.queued.get(&key) == Some(&ticket) {
                break key;
            }
        };
        fifo.live -= 1;
        if fifo.live == 0 {
            // Only entries left behind remain: gone with the namespace's FIFO.
            self.pending.remove(&group);
        } else {
            self.ring.push_back(group);
        }
        self.queued.remove(&key);
        self.in_flight.insert(key.clone());
        Some(key)
    }

    /// Marks `key` finished; queues it again if it changed meanwhile (first
    /// in its namespace if follow-up work came for it).
    pub fn done(&mut self, key: &K) {
        self.in_flight.remove(key);
        match self.dirty.remove(key) {
            Some(true) => self.add_first(key.clone()),
            Some(false) => self.add(key.clone()),
            None => {}
        }
    }

    /// Keys waiting, in either lane (not counting those in flight).
    pub fn len(&self) -> usize {
        self.queued.len() + self.in_background.len()
    }

    /// True when nothing waits and nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.is_empty() && self.in_flight.is_empty()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.in_background.is_empty()
    }
}

/// Keys to queue again at a time. A key has one deadline, the earliest
/// asked for: each reconcile asks again for what it still needs, so a later
/// request never has to be kept beside an earlier one. (A sleeping task per
/// request cost about half a kilobyte each, three or so per pod in a burst,
/// most of them sleeping until the pod's token is due.)
#[derive(Debug)]
pub struct Later<K> {
    due: HashMap<K, Instant>,
    order: BTreeSet<(Instant, K)>,
}

impl<K> Default for Later<K> {
    fn default() -> Self {
        Self {
            due: HashMap::new(),
            order: BTreeSet::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord> Later<K> {
    /// Asks for `key` at `at`; true when that is now the earliest deadline
    /// of all (the timer must wake up sooner).
    pub fn add(&mut self, key: K, at: Instant) -> bool {
        match self.due.get(&key) {
            Some(have) if *have <= at => return false,
            Some(have) => {
                self.order.remove(&(*have, key.clone()));
            }
            None => {}
        }
        self.due.insert(key.clone(), at);
        self.order.insert((at, key));
        self.next() == Some(at)
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Removes and returns the keys due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Vec<K> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.order.first()
            && *at <= now
            && let Some((_, key)) = self.order.pop_first()
        {
            self.due.remove(&key);
            out.push(key);
        }
        out
    }

    /// Keys waiting.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    /// True when no key waits.
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::VirtualKey;

    fn k(ns: &str, name: &str) -> VirtualKey {
        VirtualKey {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn busy_namespace_does_not_starve_others() {
        let mut q = FairQueue::default();
        for i in 0..10_000 {
            q.add(k("busy", &format!("p{i}")));
        }
        q.add(k("quiet", "only"));
        let first_two: Vec<_> = (0..2).map(|_| q.pop().unwrap()).collect();
        assert_eq!(first_two[1], k("quiet", "only"), "{first_two:?}");
    }

    #[test]
    fn namespaces_are_served_in_turn() {
        let mut q = FairQueue::default();
        for n in ["a1", "a2", "a3"] {
            q.add(k("a", n));
        }
        for n in ["b1", "b2"] {
            q.add(k("b", n));
        }
        q.add(k("c", "c1"));
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).map(|k| k.name).collect();
        assert_eq!(order, ["a1", "b1", "c1", "a2", "b2", "a3"]);
    }

    #[test]
    fn follow_up_work_goes_first_within_its_namespace() {
        let mut q = FairQueue::default();
        for n in ["a1", "a2", "a3"] {
            q.add(k("a", n));
        }
        q.add(k("b", "b1"));
        q.add_first(k("a", "status"));
        q.add_first(k("c", "status"));
        // Already waiting: moves to the head, once.
        q.add_first(k("a", "a3"));
        assert_eq!(q.len(), 6);
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).map(|k| k.name).collect();
        assert_eq!(order, ["status", "a3", "b1", "status", "a1", "a2"]);
        let key = k("a", "busy");
        q.add(key.clone());
        assert_eq!(q.pop(), Some(key.clone()));
        q.add_first(key.clone());
        assert!(q.pop().is_none(), "never handed out twice at once");
        q.done(&key);
        assert_eq!(q.pop(), Some(key.clone()));
        // Follow-up work that came while it was in flight keeps its place
        // ahead of the namespace's backlog.
        for n in ["a1", "a2"] {
            q.add(k("a", n));
        }
        q.add_first(key.clone());
        q.add(key.clone());
        q.done(&key);
        assert_eq!(q.pop(), Some(key));
    }

    #[test]
    fn a_key_waiting_alone_moved_first_leaves_the_other_namespaces_served() {
        // Host changes for a key already waiting alone in its namespace (an
        // initial sync queues every key, then the host watch reports the
        // copies): the namespace must stay in the turn order once, or a
        // later `pop` finds nothing there and the workers sleep with keys
        // of other namespaces still waiting.
        let mut q = FairQueue::default();
        q.add(k("a", "x"));
        q.add(k("b", "y"));
        q.add_first(k("a", "x"));
        q.add_first(k("a", "x"));
        assert_eq!(q.len(), 2);
        assert_eq!(q.ring, ["a", "b"], "each namespace once in the turn order");
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).map(|k| k.name).collect();
        assert_eq!(order, ["x", "y"]);
        assert!(q.is_empty());
        q.add(k("a", "z"));
        assert_eq!(q.pop().map(|k| k.name).as_deref(), Some("z"));
        assert!(q.pop().is_none());
    }

    proptest::proptest! {
        /// Any mix of adds, follow-ups, pops and finishes: every key added
        /// is handed out (none stranded while `pop` says there is nothing),
        /// and each namespace with keys waiting is in the turn order once.
        #[test]
        fn no_key_is_stranded(ops in proptest::collection::vec((0u8..5, 0u8..3, 0u8..3), 0..200)) {
            let mut q = FairQueue::default();
            let mut flying: Vec<VirtualKey> = Vec::new();
            for (op, ns, name) in ops {
                let key = k(&format!("n{ns}"), &format!("k{name}"));
                match op {
                    0 => q.add(key),
                    1 => q.add_first(key),
                    2 => flying.extend(q.pop()),
                    3 => q.add_background(key),
                    _ => {
                        if let Some(at) = flying.iter().position(|f| *f == key) {
                            q.done(&flying.swap_remove(at));
                        }
                    }
                }
                let waiting: HashSet<&String> = q.pending.keys().collect();
                let turns: HashSet<&String> = q.ring.iter().collect();
                proptest::prop_assert_eq!(turns.len(), q.ring.len(), "a namespace twice: {:?}", q.ring);
                proptest::prop_assert_eq!(&turns, &waiting);
            }
            // Finish what flies; then everything waiting comes out.
            for key in std::mem::take(&mut flying) {
                q.done(&key);
            }
            while let Some(key) = q.pop() {
                q.done(&key);
            }
            proptest::prop_assert!(q.is_idle(), "{} keys stranded", q.len());
        }
    }

    /// The queue's order as a plain list per namespace gives it (a key
    /// moved first is found and taken out): the oracle for the tickets.
    #[derive(Default)]
    struct Plain {
        ring: VecDeque<String>,
        fifo: HashMap<String, VecDeque<VirtualKey>>,
        flying: HashSet<VirtualKey>,
        dirty: HashMap<VirtualKey, bool>,
    }

    impl Plain {
        fn add(&mut self, key: VirtualKey, first: bool) {
            if self.flying.contains(&key) {
                let d = self.dirty.entry(key).or_insert(false);
                *d |= first;
                return;
            }
            let group = key.namespace.clone();
            let fifo = self.fifo.entry(group.clone()).or_default();
            let at = fifo.iter().position(|k| *k == key);
            if first {
                if fifo.is_empty() {
                    self.ring.push_front(group);
                }
                if let Some(at) = at {
                    fifo.remove(at);
                }
                fifo.push_front(key);
            } else if at.is_none() {
                if fifo.is_empty() {
                    self.ring.push_back(group);
                }
                fifo.push_back(key);
            }
        }

        fn pop(&mut self) -> Option<VirtualKey> {
            let group = self.ring.pop_front()?;
            let fifo = self.fifo.get_mut(&group)?;
            let key = fifo.pop_front()?;
            if fifo.is_empty() {
                self.fifo.remove(&group);
            } else {
                self.ring.push_back(group);
            }
            self.flying.insert(key.clone());
            Some(key)
        }

        fn done(&mut self, key: &VirtualKey) {
            self.flying.remove(key);
            if let Some(first) = self.dirty.remove(key) {
                self.add(key.clone(), first);
            }
        }
    }

    proptest::proptest! {
        /// Keys come out in the order of the plain list model, whatever the
        /// mix of adds, moves to the head, pops and finishes.
        #[test]
        fn the_order_is_that_of_plain_lists(ops in proptest::collection::vec((0u8..4, 0u8..3, 0u8..6), 0..300)) {
            let mut q = FairQueue::default();
            let mut plain = Plain::default();
            let mut flying: Vec<VirtualKey> = Vec::new();
            for (op, ns, name) in ops {
                let key = k(&format!("n{ns}"), &format!("k{name}"));
                match op {
                    0 => {
                        q.add(key.clone());
                        plain.add(key, false);
                    }
                    1 => {
                        q.add_first(key.clone());
                        plain.add(key, true);
                    }
                    2 => {
                        let got = q.pop();
                        proptest::prop_assert_eq!(&got, &plain.pop());
                        flying.extend(got);
                    }
                    _ => {
                        if let Some(at) = flying.iter().position(|f| *f == key) {
                            let key = flying.swap_remove(at);
                            q.done(&key);
                            plain.done(&key);
                        }
                    }
                }
            }
            loop {
                let got = q.pop();
                proptest::prop_assert_eq!(&got, &plain.pop());
                if got.is_none() {
                    break;
                }
            }
        }
    }

    #[test]
    fn resync_keys_wait_until_no_other_key_does() {
        let mut q = FairQueue::default();
        for i in 0..3 {
            q.add_background(k("a", &format!("old{i}")));
        }
        q.add(k("b", "new"));
        assert_eq!(q.len(), 4);
        assert_eq!(q.pop(), Some(k("b", "new")), "new work first");
        // More new work while the resync waits: still first.
        q.add(k("c", "newer"));
        assert_eq!(q.pop(), Some(k("c", "newer")));
        assert_eq!(q.pop(), Some(k("a", "old0")));
        // A resync key that changes meanwhile takes the normal lane, once.
        q.add_first(k("a", "old2"));
        assert_eq!(q.pop(), Some(k("a", "old2")));
        assert_eq!(q.pop(), Some(k("a", "old1")));
        assert_eq!(q.pop(), None, "old2 is not served twice");
        assert!(!q.is_idle(), "four in flight");
        for key in ["b/new", "c/newer", "a/old0", "a/old2", "a/old1"] {
            let (ns, name) = key.split_once('/').unwrap();
            q.done(&k(ns, name));
        }
        assert!(q.is_idle());
        // Waiting or in flight already: not queued again by the resync.
        q.add(k("a", "x"));
        q.add_background(k("a", "x"));
        assert_eq!(q.len(), 1);
        let x = q.pop().unwrap();
        q.add_background(x.clone());
        assert!(q.pop().is_none());
        q.done(&x);
        assert!(q.is_idle());
    }

    #[test]
    fn duplicates_collapse_and_in_flight_keys_come_back_once() {
        let mut q = FairQueue::default();
        q.add(k("a", "x"));
        q.add(k("a", "x"));
        assert_eq!(q.len(), 1);
        let key = q.pop().unwrap();
        assert!(q.pop().is_none());
        // Changed twice while being reconciled: one more turn, not two.
        q.add(key.clone());
        q.add(key.clone());
        assert!(q.pop().is_none(), "never handed out twice at once");
        q.done(&key);
        assert_eq!(q.pop(), Some(key.clone()));
        q.done(&key);
        assert!(q.pop().is_none());
        assert!(q.is_idle());
    }

    #[test]
    fn a_key_waits_once_until_its_earliest_deadline() {
        let t0 = Instant::now();
        let s = std::time::Duration::from_secs;
        let mut l = Later::default();
        assert!(l.add(k("a", "renew"), t0 + s(3000)), "first deadline");
        assert!(l.add(k("a", "retry"), t0 + s(1)), "earlier than all");
        assert!(!l.add(k("a", "other"), t0 + s(10)));
        // Asked again for later: the earlier deadline stands.
        assert!(!l.add(k("a", "retry"), t0 + s(60)));
        // Asked again for sooner: moves up.
        assert!(!l.add(k("a", "renew"), t0 + s(5)));
        assert_eq!(l.len(), 3);
        assert_eq!(l.next(), Some(t0 + s(1)));
        assert!(l.pop_due(t0).is_empty());
        let names = |v: Vec<VirtualKey>| v.into_iter().map(|k| k.name).collect::<Vec<_>>();
        assert_eq!(names(l.pop_due(t0 + s(5))), ["retry", "renew"]);
        assert_eq!(names(l.pop_due(t0 + s(3000))), ["other"]);
        assert!(l.is_empty() && l.next().is_none());
    }
}
