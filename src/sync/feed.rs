//! What connects a cache to the rest of the syncer: the [`Feed`] an owner
//! (an engine, or a plain watch when no engine syncs the kind) fills, the
//! [`Hooks`] other kinds hang on its changes, and the [`Readiness`] it
//! reports once its initial sync is done.

use std::sync::{Arc, RwLock};

use super::cache::{self, Cache, Writer};

type Hook<K> = Box<dyn Fn(&K) + Send + Sync>;

/// Functions called with every object a watch reports (added, changed or
/// deleted): other kinds use them to queue what an object refers to.
pub struct Hooks<K>(RwLock<Vec<Hook<K>>>);

impl<K> Default for Hooks<K> {
    fn default() -> Self {
        Self(RwLock::new(Vec::new()))
    }
}

impl<K> std::fmt::Debug for Hooks<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Hooks").finish_non_exhaustive()
    }
}

impl<K> Hooks<K> {
    /// Adds `hook`.
    pub fn add(&self, hook: impl Fn(&K) + Send + Sync + 'static) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(hook));
    }

    /// Calls every hook with `obj`.
    pub fn call(&self, obj: &K) {
        let hooks = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for hook in hooks.iter() {
            hook(obj);
        }
    }
}

/// Set once, awaited by anyone: an owner's initial sync is done.
#[derive(Debug)]
pub struct Readiness(tokio::sync::watch::Sender<bool>);

impl Default for Readiness {
    fn default() -> Self {
        Self(tokio::sync::watch::channel(false).0)
    }
}

impl Readiness {
    /// Marks it ready; true the first time.
    pub fn set(&self) -> bool {
        !self.0.send_replace(true)
    }

    /// True once set.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once set.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close.
        let _ = rx.wait_for(|r| *r).await;
    }
}

/// One cache with its writer, the hooks on its changes and its owner's
/// readiness.
pub struct Feed<K> {
    /// The reader half.
    pub cache: Cache<K>,
    /// The writer half, for the owner's watch.
    pub writer: Writer<K>,
    /// Called for every object the owner's watch reports.
    pub hooks: Arc<Hooks<K>>,
    /// Set when the owner's initial sync is done.
    pub ready: Arc<Readiness>,
}

impl<K> Feed<K> {
    /// A new empty feed, connected to nothing else.
    pub fn new() -> Self {
        let (cache, writer) = cache::cache();
        Self {
            cache,
            writer,
            hooks: Arc::default(),
            ready: Arc::default(),
        }
    }
}

impl<K> std::fmt::Debug for Feed<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("ready", &self.ready.is_set())
            .finish_non_exhaustive()
    }
}

impl<K> Default for Feed<K> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn readiness_wakes_every_waiter_once_set() {
        let r = Arc::new(Readiness::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let r = Arc::clone(&r);
                tokio::spawn(async move { r.wait().await })
            })
            .collect();
        assert!(!r.is_set());
        assert!(r.set());
        assert!(!r.set(), "only the first set reports true");
        for w in waiters {
            w.await.unwrap();
        }
        r.wait().await;
    }

    #[test]
    fn hooks_see_every_object() {
        let hooks = Hooks::<u32>::default();
        let seen = Arc::new(AtomicUsize::new(0));
        for _ in 0..2 {
            let seen = Arc::clone(&seen);
            hooks.add(move |n| {
                seen.fetch_add(*n as usize, Ordering::SeqCst);
            });
        }
        hooks.call(&5);
        assert_eq!(seen.load(Ordering::SeqCst), 10);
    }
}
