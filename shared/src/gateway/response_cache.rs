//! The response cache as the gateway uses it: a tier of recent entries in process memory in
//! front of the store's cache table.
//!
//! A hit in memory costs a hash lookup under a mutex instead of a store read (a SQLite read on
//! the blocking pool, or a DynamoDB `GetItem`). The tier is bounded in bytes and drops the
//! least recently used entries first. It needs no invalidation: an entry is immutable under its
//! key (a later put replaces it with an answer to the same request), and freshness and purge
//! times travel with the entry, so a copy in memory answers exactly as the store would. Other
//! processes' writes reach this one through the store, on a memory miss.

use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use lru::LruCache;

use crate::store::{CacheKey, CachedResponse, SharedStore, StoreError};

/// What an entry costs besides its body: the key, the timestamps, the list links.
const ENTRY_OVERHEAD: usize = 128;
/// No single entry may take more than this share of the tier.
const MAX_ENTRY_SHARE: usize = 8;

/// The store's cache with an in-memory tier (when `memory_bytes` > 0).
pub struct ResponseCache {
    store: SharedStore,
    hot: Option<Mutex<Hot>>,
}

struct Hot {
    entries: LruCache<[u8; 32], CachedResponse>,
    bytes: usize,
    max_bytes: usize,
}

impl Hot {
    fn cost(entry: &CachedResponse) -> usize {
        entry.body.len() + ENTRY_OVERHEAD
    }

    fn insert(&mut self, digest: [u8; 32], mut entry: CachedResponse) {
        // A body read from a connection can be a slice of a much larger read buffer, which the
        // slice keeps alive; a copy of exactly its bytes is what the bound counts.
        entry.body = Bytes::copy_from_slice(&entry.body);
        let cost = Self::cost(&entry);
        if cost > self.max_bytes / MAX_ENTRY_SHARE {
            // Too large to keep in memory: it stays in the store only.
            if let Some(old) = self.entries.pop(&digest) {
                self.bytes -= Self::cost(&old);
            }
            return;
        }
        if let Some(old) = self.entries.put(digest, entry) {
            self.bytes -= Self::cost(&old);
        }
        self.bytes += cost;
        while self.bytes > self.max_bytes {
            match self.entries.pop_lru() {
                Some((_, old)) => self.bytes -= Self::cost(&old),
                None => break,
            }
        }
    }
}

impl ResponseCache {
    /// The store's cache, with up to `memory_bytes` of recent entries kept in memory (0: none).
    pub fn new(store: SharedStore, memory_bytes: usize) -> Self {
        let hot = (memory_bytes > 0).then(|| {
            Mutex::new(Hot {
                entries: LruCache::unbounded(),
                bytes: 0,
                max_bytes: memory_bytes,
            })
        });
        Self { store, hot }
    }

    fn hot(&self) -> Option<MutexGuard<'_, Hot>> {
        // A poisoned lock only means a panic elsewhere mid-update; the map itself is intact.
        self.hot
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The entry under `key` unless it is past its purge time (expired entries are returned,
    /// as from the store): from memory when it is there, else from the store, remembered.
    pub async fn get(
        &self,
        key: &CacheKey,
        now_ms: u64,
    ) -> Result<Option<CachedResponse>, StoreError> {
        if let Some(mut hot) = self.hot() {
            match hot.entries.get(&key.digest) {
                Some(entry) if entry.purge_at_ms > now_ms => return Ok(Some(entry.clone())),
                Some(_) => {
                    if let Some(old) = hot.entries.pop(&key.digest) {
                        hot.bytes -= Hot::cost(&old);
                    }
                }
                None => {}
            }
        }
        let found = self.store.cache_get(key, now_ms).await?;
        if let (Some(entry), Some(mut hot)) = (&found, self.hot()) {
            hot.insert(key.digest, entry.clone());
        }
        Ok(found)
    }

    /// Keeps an entry in memory: one another process stored (found by polling), or one this
    /// process is about to store ([`Self::persist`]).
    pub fn remember(&self, key: &CacheKey, entry: &CachedResponse) {
        if let Some(mut hot) = self.hot() {
            hot.insert(key.digest, entry.clone());
        }
    }

    /// Stores or replaces the entry under `key` in the store only (after [`Self::remember`]).
    pub async fn persist(&self, key: &CacheKey, entry: &CachedResponse) -> Result<(), StoreError> {
        self.store.cache_put(key, entry).await
    }

    /// Stores or replaces the entry under `key`, in memory and in the store.
    pub async fn put(&self, key: &CacheKey, entry: &CachedResponse) -> Result<(), StoreError> {
        self.remember(key, entry);
        self.persist(key, entry).await
    }

    /// Bytes and entries held in memory now.
    pub fn memory_use(&self) -> (usize, usize) {
        self.hot().map_or((0, 0), |h| (h.bytes, h.entries.len()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::CacheStore;
    use crate::store::sqlite::SqliteStore;

    fn key(n: u8, tenant: &str) -> CacheKey {
        CacheKey {
            digest: [n; 32],
            tenant: tenant.to_owned(),
        }
    }

    fn entry(body: &str, purge_at_ms: u64) -> CachedResponse {
        CachedResponse {
            body: Bytes::from(body.to_owned()),
            created_at_ms: 0,
            expires_at_ms: purge_at_ms / 2,
            purge_at_ms,
        }
    }

    #[tokio::test]
    async fn puts_reach_the_store_and_hits_come_from_memory() {
        let store = Arc::new(SqliteStore::open(":memory:").unwrap());
        let cache = ResponseCache::new(store.clone(), 1 << 20);
        cache.put(&key(1, "a"), &entry("one", 1000)).await.unwrap();
        // In the store, for other processes and restarts.
        let stored = store.cache_get(&key(1, "a"), 10).await.unwrap().unwrap();
        assert_eq!(stored.body, "one");
        // Another process replaces it in the store; this one still answers from memory,
        // with an answer to the same request.
        store
            .cache_put(&key(1, "a"), &entry("one, again", 1000))
            .await
            .unwrap();
        assert_eq!(
            cache.get(&key(1, "a"), 10).await.unwrap().unwrap().body,
            "one"
        );
        assert_eq!(cache.memory_use().1, 1);
    }

    #[tokio::test]
    async fn memory_misses_read_the_store_and_remember() {
        let store = Arc::new(SqliteStore::open(":memory:").unwrap());
        let cache = ResponseCache::new(store.clone(), 1 << 20);
        store
            .cache_put(&key(2, "a"), &entry("from another process", 1000))
            .await
            .unwrap();
        assert_eq!(cache.memory_use().1, 0);
        let got = cache.get(&key(2, "a"), 10).await.unwrap().unwrap();
        assert_eq!(got.body, "from another process");
        assert_eq!(cache.memory_use().1, 1);
        assert!(cache.get(&key(3, "a"), 10).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn purged_entries_are_not_served_from_memory() {
        let store = Arc::new(SqliteStore::open(":memory:").unwrap());
        let cache = ResponseCache::new(store, 1 << 20);
        cache.put(&key(4, "a"), &entry("old", 100)).await.unwrap();
        // Expired but not purged: returned (the caller decides fresh or stale).
        assert!(cache.get(&key(4, "a"), 99).await.unwrap().is_some());
        assert!(cache.get(&key(4, "a"), 100).await.unwrap().is_none());
        assert_eq!(cache.memory_use(), (0, 0));
    }

    #[tokio::test]
    async fn memory_stays_within_its_bound_dropping_the_least_recently_used() {
        let store = Arc::new(SqliteStore::open(":memory:").unwrap());
        let body = "x".repeat(1000);
        let bound = 10 * (1000 + ENTRY_OVERHEAD);
        let cache = ResponseCache::new(store, bound);
        for n in 0..10 {
            cache.put(&key(n, "a"), &entry(&body, 1000)).await.unwrap();
        }
        // Touch entry 0 so that entry 1 is the least recently used.
        assert!(cache.get(&key(0, "a"), 10).await.unwrap().is_some());
        cache.put(&key(10, "a"), &entry(&body, 1000)).await.unwrap();
        let (bytes, entries) = cache.memory_use();
        assert!(bytes <= bound, "{bytes} > {bound}");
        assert_eq!(entries, 10);
        {
            let hot = cache.hot().unwrap();
            assert!(hot.entries.contains(&[0; 32]));
            assert!(!hot.entries.contains(&[1; 32]));
        }
        // Entries bigger than an eighth of the tier stay in the store only.
        cache
            .put(&key(11, "a"), &entry(&"y".repeat(bound / 4), 1000))
            .await
            .unwrap();
        assert!(!cache.hot().unwrap().entries.contains(&[11; 32]));
        assert!(cache.get(&key(11, "a"), 10).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_body_sliced_from_a_large_buffer_is_kept_as_a_compact_copy() {
        let store = Arc::new(SqliteStore::open(":memory:").unwrap());
        let cache = ResponseCache::new(store, 1 << 20);
        let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut e = entry("", 1000);
        e.body = buffer.slice(0..100);
        cache.put(&key(6, "a"), &e).await.unwrap();
        let kept = cache
            .hot()
            .unwrap()
            .entries
            .get(&[6; 32])
            .unwrap()
            .body
            .clone();
        assert_eq!(kept.len(), 100);
        // Not a view into the 64 KiB buffer: the copy's memory is its own.
        let buffer_range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        assert!(!buffer_range.contains(&(kept.as_ptr() as usize)));
        assert_eq!(cache.memory_use(), (100 + ENTRY_OVERHEAD, 1));
    }

    #[tokio::test]
    async fn without_memory_every_lookup_reads_the_store() {
        let store = Arc::new(SqliteStore::open(":memory:").unwrap());
        let cache = ResponseCache::new(store.clone(), 0);
        cache.put(&key(5, "a"), &entry("one", 1000)).await.unwrap();
        store
            .cache_put(&key(5, "a"), &entry("two", 1000))
            .await
            .unwrap();
        assert_eq!(
            cache.get(&key(5, "a"), 10).await.unwrap().unwrap().body,
            "two"
        );
        assert_eq!(cache.memory_use(), (0, 0));
    }
}
