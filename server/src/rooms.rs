//! The rooms in memory, and the one background task that writes them to the store.
//!
//! Rooms load lazily on first use and unload after they have been idle (no peers) for a while,
//! always after a final flush. The flusher is the only writer: it group-commits each room's
//! buffered updates every flush interval, compacts rooms whose update log grew long, and, when
//! the database is away, keeps everything in memory and retries with backoff while `/readyz`
//! reports the store as degraded. One flush is one transaction for all rooms (a group commit),
//! so a hundred busy rooms cost one write every flush interval, not a hundred.
//!
//! After each flush the flusher also takes the versions that are due (see [`crate::history`]):
//! for a room edited for the version interval, and for a room whose last peer left. Versions
//! are built from the copies the flush has just written, so they cost the rooms nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use uuid::Uuid;

use crate::auth;
use crate::blocking::blocking;
use crate::config::{History, Limits, Persistence};
use crate::gate::Gate;
use crate::history::{Reason, Take, Version};
use crate::metrics::Metrics;
use crate::room::{close, now_ms, CloseReason, FlushBatch, Room, RoomMeta};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RoomsError {
    #[error("no such room")]
    NotFound,
    #[error("the database is unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Corrupt(String),
    #[error("no such version")]
    NoVersion,
    #[error("no file {0:?} in this version")]
    NoFileInVersion(String),
    /// The restore would break the room's limits.
    #[error("{0}")]
    TooLarge(String),
}

/// How often rooms not in memory are looked at: versions still to take (after a crash), old
/// versions to prune.
const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

struct Entry {
    room: Arc<Room>,
    /// Sequence number the next stored update gets.
    next_seq: i64,
    /// Updates stored since the last compaction.
    since_compaction: u64,
    /// Files were written since the room's last version.
    unversioned: bool,
    /// When its last version was taken (or it was loaded).
    versioned_at: Instant,
}

struct Shared {
    store: Store,
    limits: Arc<Limits>,
    persistence: Persistence,
    history: History,
    metrics: Arc<Metrics>,
    // A std mutex: held only to look up or insert an entry, never across an await.
    rooms: Mutex<HashMap<Uuid, Entry>>,
    // Serialises loads so that two first joins to the same room build it once.
    loading: tokio::sync::Mutex<()>,
    // Held while writing: a flush, a version, a restore, an unload. A version reads what the
    // flushes wrote and clears their notes, so none may run in between.
    writer: tokio::sync::Mutex<()>,
    degraded: AtomicBool,
    gate: Gate,
}

/// A cheap handle on the room registry.
#[derive(Clone)]
pub struct Rooms {
    shared: Arc<Shared>,
}

/// What `POST /rooms` asks for.
pub struct NewRoom {
    pub name: Option<String>,
    pub language: Option<String>,
    pub files: Vec<(String, String)>,
}

impl Rooms {
    pub fn new(
        store: Store,
        limits: Limits,
        persistence: Persistence,
        history: History,
        metrics: Arc<Metrics>,
    ) -> Rooms {
        let gate = Gate::new(
            limits.create_token.as_ref().map(|secret| secret.0.as_str()),
            limits.max_rooms_per_minute,
        );
        Rooms {
            shared: Arc::new(Shared {
                gate,
                store,
                limits: Arc::new(limits),
                persistence,
                history,
                metrics,
                rooms: Mutex::new(HashMap::new()),
                loading: tokio::sync::Mutex::new(()),
                writer: tokio::sync::Mutex::new(()),
                degraded: AtomicBool::new(false),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Who may create rooms, and how often.
    pub fn gate(&self) -> &Gate {
        &self.shared.gate
    }

    /// True while writes fail, or while some update has waited for the store much longer
    /// than the flush interval (a write is hanging, or the flusher is backing off).
    pub fn degraded(&self) -> bool {
        let patience = self.shared.persistence.flush_interval() * 2 + Duration::from_secs(1);
        self.shared.degraded.load(Ordering::Relaxed)
            || self.entries().values().any(|e| {
                e.room
                    .unflushed_for()
                    .is_some_and(|waited| waited > patience)
            })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.shared.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn loaded(&self, id: Uuid) -> Option<Arc<Room>> {
        self.entries().get(&id).map(|e| e.room.clone())
    }

    pub fn loaded_count(&self) -> usize {
        self.entries().len()
    }

    pub fn unflushed_count(&self) -> usize {
        self.entries()
            .values()
            .filter(|e| e.room.has_unflushed())
            .count()
    }

    /// Creates a room in the store and returns it with its token (shown only now).
    pub async fn create(&self, new: NewRoom) -> Result<(RoomMeta, String), RoomsError> {
        let token = auth::new_token();
        let now = now_ms();
        let meta = RoomMeta {
            id: Uuid::new_v4(),
            name: new.name,
            language: new.language,
            token_hash: auth::hash_token(&token),
            created_at: now,
            updated_at: now,
        };
        let state = Room::initial_update(&new.files);
        self.shared
            .store
            .create_room(&meta, &state, &new.files)
            .await?;
        Metrics::inc(&self.shared.metrics.rooms_created);
        Ok((meta, token))
    }

    /// The room's metadata, from memory if it is loaded, else from the store.
    pub async fn meta(&self, id: Uuid) -> Result<RoomMeta, RoomsError> {
        if let Some(room) = self.loaded(id) {
            return Ok(room.meta.clone());
        }
        self.shared
            .store
            .room_meta(id)
            .await?
            .ok_or(RoomsError::NotFound)
    }

    /// The room in memory, loading it from the store on first use.
    pub async fn get(&self, id: Uuid) -> Result<Arc<Room>, RoomsError> {
        if let Some(room) = self.loaded(id) {
            return Ok(room);
        }
        let _guard = self.shared.loading.lock().await;
        if let Some(room) = self.loaded(id) {
            return Ok(room);
        }
        let stored = self
            .shared
            .store
            .load_room(id)
            .await?
            .ok_or(RoomsError::NotFound)?;
        let unversioned = self.shared.store.has_unversioned(id).await?;
        let room = blocking(|| {
            Room::load(
                stored.meta,
                self.shared.limits.clone(),
                stored.state.as_deref(),
                &stored.updates,
            )
        })
        .map_err(|e| RoomsError::Corrupt(e.to_string()))?;
        let room = Arc::new(room);
        self.entries().insert(
            id,
            Entry {
                room: room.clone(),
                next_seq: stored.last_seq + 1,
                since_compaction: stored.updates.len() as u64,
                unversioned,
                versioned_at: Instant::now(),
            },
        );
        Metrics::inc(&self.shared.metrics.rooms_loaded);
        tracing::info!(room = %id, updates = stored.updates.len(), "room loaded");
        Ok(room)
    }

    /// Deletes the room everywhere; its peers are disconnected with a reason.
    pub async fn delete(&self, id: Uuid) -> Result<(), RoomsError> {
        if !self.shared.store.delete_room(id).await? {
            return Err(RoomsError::NotFound);
        }
        if let Some(entry) = self.entries().remove(&id) {
            entry
                .room
                .close(CloseReason::new(close::GOING_AWAY, "room deleted"));
        }
        tracing::info!(room = %id, "room deleted");
        Ok(())
    }

    /// Runs the flusher until `shutdown` fires, then flushes everything one last time.
    pub async fn run_flusher(self, mut shutdown: watch::Receiver<bool>) {
        let interval = self.shared.persistence.flush_interval();
        let mut backoff = interval;
        // The first sweep comes at once: a crash may have left versions to take.
        let mut swept: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => break,
            }
            let _writing = self.shared.writer.lock().await;
            if self.flush_all().await {
                backoff = interval;
                self.take_due_versions().await;
                if swept.is_none_or(|at| at.elapsed() >= SWEEP_INTERVAL) {
                    swept = Some(Instant::now());
                    self.sweep().await;
                }
                self.unload_idle().await;
            } else {
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        self.shutdown().await;
    }

    /// Takes a version of each room edited for the version interval, and of each room whose
    /// last peer left since it was edited.
    async fn take_due_versions(&self) {
        let interval = self.shared.history.version_interval();
        let due: Vec<(Uuid, Reason)> = self
            .entries()
            .iter()
            .filter(|(_, e)| e.unversioned)
            .filter_map(|(id, e)| {
                if e.room.peer_count() == 0 {
                    Some((*id, Reason::Left))
                } else {
                    (e.versioned_at.elapsed() >= interval).then_some((*id, Reason::Interval))
                }
            })
            .collect();
        for (id, reason) in due {
            let take = Take {
                reason,
                label: None,
                overrides: &[],
                always: false,
                now: now_ms(),
            };
            // A failure leaves the notes in the store: the next flush tries again.
            let _ = self.write_version(id, take).await;
        }
    }

    /// Rooms not in memory: takes the versions a crash left to take (their files were
    /// written, their version was not), and prunes versions past their age.
    async fn sweep(&self) {
        let store = &self.shared.store;
        let now = now_ms();
        let oldest_kept = self.shared.history.retention(now).since;
        let rooms = store
            .rooms_to_sweep(oldest_kept.unwrap_or(i64::MIN))
            .await
            .unwrap_or_default();
        for id in rooms {
            if self.loaded(id).is_some() {
                continue;
            }
            let take = Take {
                reason: Reason::Left,
                label: None,
                overrides: &[],
                always: false,
                now,
            };
            if self.write_version(id, take).await.is_err() {
                return;
            }
        }
    }

    /// Takes a version and prunes the room's versions. The caller holds the writer lock.
    async fn write_version(&self, id: Uuid, take: Take<'_>) -> Result<Option<Version>, StoreError> {
        let store = &self.shared.store;
        let metrics = &self.shared.metrics;
        let version = match store.take_version(id, take).await {
            Ok(version) => version,
            Err(e) => {
                Metrics::inc(&metrics.version_failures);
                tracing::warn!(room = %id, error = %e, "version not taken; tried again later");
                return Err(e);
            }
        };
        if let Some(entry) = self.entries().get_mut(&id) {
            entry.unversioned = false;
            entry.versioned_at = Instant::now();
        }
        if let Some(version) = &version {
            Metrics::inc(&metrics.versions_taken);
            tracing::info!(room = %id, version = version.id, reason = ?version.reason, files = version.files.len(), "version taken");
            let keep = self.shared.history.retention(take.now);
            match store.prune_versions(id, keep).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(room = %id, pruned, "old versions pruned"),
                Err(e) => tracing::warn!(room = %id, error = %e, "old versions not pruned"),
            }
        }
        Ok(version)
    }

    /// Takes a version now, with everything edited so far (`POST /rooms/{id}/versions`).
    pub async fn take_version(&self, id: Uuid, label: Option<&str>) -> Result<Version, RoomsError> {
        let _writing = self.shared.writer.lock().await;
        self.flush().await?;
        let take = Take {
            reason: Reason::Request,
            label,
            overrides: &[],
            always: true,
            now: now_ms(),
        };
        let version = self.write_version(id, take).await?;
        Ok(version.expect("a version is always taken on request"))
    }

    /// Restores files as they were at version `seq` (`paths`, or all of them, then removing
    /// files that version did not have) as a new edit by `author` that every peer receives.
    /// A version of exactly what the restore replaced is taken with it, and returned with the
    /// paths the restore changed (none when the files were as in that version already).
    pub async fn restore(
        &self,
        id: Uuid,
        seq: i64,
        paths: Option<Vec<String>>,
        author: &str,
    ) -> Result<(Option<Version>, Vec<String>), RoomsError> {
        let store = &self.shared.store;
        if store.version(id, seq).await?.is_none() {
            return Err(RoomsError::NoVersion);
        }
        let (wanted, only_these) = match paths {
            Some(paths) => {
                let mut wanted = Vec::with_capacity(paths.len());
                for path in paths {
                    match store.version_text(id, seq, &path).await? {
                        Some(text) => wanted.push((path, Some(text))),
                        None => return Err(RoomsError::NoFileInVersion(path)),
                    }
                }
                (wanted, false)
            }
            None => {
                let files = store.version_files(id, seq).await?;
                (files.into_iter().map(|(p, t)| (p, Some(t))).collect(), true)
            }
        };
        // Under the writer lock the room cannot unload, and the version before the restore
        // builds on a store that has every edit so far.
        let _writing = self.shared.writer.lock().await;
        let room = self.get(id).await?;
        self.flush().await?;
        let replaced = blocking(|| room.restore_files(&wanted, only_these, author))
            .map_err(RoomsError::TooLarge)?;
        if replaced.is_empty() {
            return Ok((None, Vec::new()));
        }
        let label = format!("before restoring version {seq}");
        let take = Take {
            reason: Reason::Restore,
            label: Some(&label),
            overrides: &replaced,
            always: true,
            now: now_ms(),
        };
        // The texts replaced live only in `replaced` now: worth a few tries.
        let mut tries = 0;
        let version = loop {
            match self.write_version(id, take).await {
                Ok(version) => break version.expect("always taken"),
                Err(e) if tries == 4 => {
                    tracing::error!(room = %id, error = %e, "the version before a restore could not be written");
                    return Err(e.into());
                }
                Err(_) => tries += 1,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        self.mark_unversioned(id);
        tracing::info!(room = %id, version = seq, files = replaced.len(), "version restored");
        let mut paths: Vec<String> = replaced.into_iter().map(|(path, _)| path).collect();
        paths.sort();
        Ok((Some(version), paths))
    }

    /// Flushes every room with buffered updates. False if any write failed.
    pub async fn flush_all(&self) -> bool {
        match self.flush().await {
            Ok(()) => {
                if self.shared.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("store available again; buffered updates written");
                }
                true
            }
            Err(e) => {
                Metrics::inc(&self.shared.metrics.flush_failures);
                if !self.shared.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "store unavailable; keeping updates in memory and retrying");
                }
                false
            }
        }
    }

    /// One group commit: the buffered updates of every room, in one transaction.
    async fn flush(&self) -> Result<(), StoreError> {
        let rooms: Vec<(Uuid, Arc<Room>, i64, u64)> = self
            .entries()
            .iter()
            .map(|(id, e)| (*id, e.room.clone(), e.next_seq, e.since_compaction))
            .collect();
        let taken: Vec<_> = rooms
            .into_iter()
            .filter_map(|(id, room, seq, since)| {
                let batch = room.take_unflushed()?;
                Some((id, room, seq, since, batch))
            })
            .collect();
        if taken.is_empty() {
            return Ok(());
        }
        let rows: Vec<Vec<Vec<u8>>> = taken.iter().map(|(.., b)| b.rows()).collect();
        let writes: Vec<(Uuid, i64, &[Vec<u8>], &FlushBatch)> = taken
            .iter()
            .zip(&rows)
            .map(|((id, _, seq, _, b), rows)| (*id, *seq, rows.as_slice(), b))
            .collect();
        let (written, failure) = self.append(&writes).await;
        let mut due = Vec::new();
        let metrics = &self.shared.metrics;
        for (((id, room, seq, since, batch), rows), written) in
            taken.into_iter().zip(&rows).zip(written)
        {
            if !written {
                room.restore(batch);
                continue;
            }
            room.flushed();
            self.mark_unversioned(id);
            metrics
                .updates_written
                .fetch_add(batch.updates.len() as u64, Ordering::Relaxed);
            let count = rows.len() as i64;
            metrics
                .update_rows_written
                .fetch_add(count as u64, Ordering::Relaxed);
            let last = seq + count - 1;
            let since = since + count as u64;
            self.set_progress(id, last + 1, since);
            if since >= self.shared.persistence.compact_after {
                due.push((id, room, last));
            }
        }
        if failure.is_none() {
            Metrics::inc(&metrics.flushes);
        }
        // Every written room is marked as such before any compaction: a compaction that fails
        // leaves only that room's log long (it is tried again after its next flush), never
        // another room's progress behind (its next rows would then collide with stored ones).
        for (id, room, last) in due {
            let snapshot = blocking(|| room.snapshot());
            // The snapshot may include updates newer than `last`; they are stored again
            // later and applying an update twice is a no-op, so nothing is lost or doubled.
            match self.shared.store.compact(id, &snapshot, last).await {
                Ok(()) => {
                    Metrics::inc(&metrics.compactions);
                    self.set_progress(id, last + 1, 0);
                }
                Err(e) => {
                    Metrics::inc(&metrics.compaction_failures);
                    tracing::warn!(room = %id, error = %e, "compaction failed; it is tried again after the next flush");
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Writes the batches in one transaction. Should that fail while the database answers,
    /// one room's rows may be what it refuses: each room is then written on its own, so that
    /// the others are not held back by it. Returns which batches are written, and the first
    /// error.
    async fn append(
        &self,
        writes: &[(Uuid, i64, &[Vec<u8>], &FlushBatch)],
    ) -> (Vec<bool>, Option<StoreError>) {
        let store = &self.shared.store;
        match store.append(writes).await {
            Ok(()) => (vec![true; writes.len()], None),
            Err(e) if e.is_unreachable() || writes.len() == 1 => {
                (vec![false; writes.len()], Some(e))
            }
            Err(e) => {
                tracing::warn!(error = %e, rooms = writes.len(), "group commit failed; writing each room on its own");
                let mut written = Vec::with_capacity(writes.len());
                let mut first = None;
                for write in writes {
                    let result = store.append(std::slice::from_ref(write)).await;
                    written.push(result.is_ok());
                    if let Err(e) = result {
                        tracing::warn!(room = %write.0, error = %e, "room not written; kept in memory and retried");
                        first.get_or_insert(e);
                    }
                }
                (written, first)
            }
        }
    }

    fn mark_unversioned(&self, id: Uuid) {
        if let Some(entry) = self.entries().get_mut(&id) {
            entry.unversioned = true;
        }
    }

    fn set_progress(&self, id: Uuid, next_seq: i64, since_compaction: u64) {
        if let Some(entry) = self.entries().get_mut(&id) {
            entry.next_seq = next_seq;
            entry.since_compaction = since_compaction;
        }
    }

    /// Unloads rooms that have had no peers for the idle period and have nothing unflushed.
    async fn unload_idle(&self) {
        let idle = self.shared.persistence.idle_unload();
        let mut entries = self.entries();
        let ids: Vec<Uuid> = entries
            .iter()
            .filter(|(_, e)| {
                e.room.idle_for().is_some_and(|d| d >= idle) && !e.room.has_unflushed()
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(entry) = entries.remove(&id) {
                entry
                    .room
                    .close(CloseReason::new(close::GOING_AWAY, "room unloaded"));
                Metrics::inc(&self.shared.metrics.rooms_unloaded);
                tracing::info!(room = %id, "idle room unloaded");
            }
        }
    }

    /// Closes every connection with a proper close frame and writes everything, retrying for
    /// a while if the database is away.
    async fn shutdown(&self) {
        let rooms: Vec<Arc<Room>> = self.entries().values().map(|e| e.room.clone()).collect();
        for room in &rooms {
            room.close(CloseReason::new(close::GOING_AWAY, "server shutting down"));
        }
        for attempt in 1..=10 {
            if self.flush_all().await {
                tracing::info!(rooms = rooms.len(), "all rooms flushed");
                // Every peer is gone: each edited room gets its version.
                self.take_due_versions().await;
                break;
            }
            tracing::warn!(attempt, "final flush failed; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.shared.store.close().await;
    }
}
