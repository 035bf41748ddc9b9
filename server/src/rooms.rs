//! The rooms in memory, and the one background task that writes them to the store.
//!
//! Rooms load lazily on first use and unload after they have been idle (no peers) for a while,
//! always after a final flush. The flusher is the only writer: it group-commits each room's
//! buffered updates every flush interval, compacts rooms whose update log grew long, and, when
//! the database is away, keeps everything in memory and retries with backoff while `/readyz`
//! reports the store as degraded. One flush is one transaction for all rooms (a group commit),
//! so a hundred busy rooms cost one write every flush interval, not a hundred.
//!
//! The update log is what makes an edit durable. The plain-text copy of each file, which the
//! REST API and the versions read, is written only when the room goes quiet, while typing goes
//! on every [`crate::room::COPIES_EVERY`], before a version, and on unload and shutdown: bytes
//! written per keystroke do not grow with the file. A flush that writes updates without the
//! copies marks the room's copies stale in the same transaction, and a room whose copies are
//! stale is read from its log, never from its copies (after a crash too).
//!
//! After each flush the flusher also takes the versions that are due (see [`crate::history`]):
//! for a room edited for the version interval, and for a room whose last peer left. Versions
//! are built from the copies, written for them first, so they cost the rooms nothing.
//!
//! With a relay (`--redis-url`, see docs/scale-out.md) several nodes may hold the same room:
//! each writes the updates its own peers made; updates relayed from another node are written
//! by that node, unless it falls silent before confirming them, when the nodes that hold them
//! write the whole document instead (a compaction, which folds in every stored row).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use uuid::Uuid;

use crate::auth;
use crate::blocking::blocking;
use crate::clock::now_ms;
use crate::config::{History, Limits, Persistence};
use crate::connections::Connections;
use crate::gate::Gate;
use crate::history::{Reason, Take, Version};
use crate::metrics::Metrics;
use crate::paths::{self, PathError};
use crate::relay::{self, NodeId, Place, Relay, Relayed};
use crate::room::{close, CloseReason, FileInfo, FlushBatch, Room, RoomMeta};
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
    #[error(transparent)]
    Invalid(#[from] NewRoomError),
    /// The restore would break the room's limits.
    #[error("{0}")]
    TooLarge(String),
}

/// How often rooms not in memory are looked at: versions still to take (after a crash), old
/// versions to prune.
const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

struct Entry {
    room: Arc<Room>,
    /// Rows this node stored since the last compaction.
    since_compaction: u64,
    /// Files were written since the room's last version.
    unversioned: bool,
    /// When its last version was taken (or it was loaded).
    versioned_at: Instant,
    /// Another node fell silent before confirming that its updates, which this node holds,
    /// are written: the next flush compacts the room.
    secure: bool,
}

struct Shared {
    store: Store,
    limits: Arc<Limits>,
    persistence: Persistence,
    history: History,
    metrics: Arc<Metrics>,
    connections: Connections,
    // A std mutex: held only to look up or insert an entry, never across an await.
    rooms: Mutex<HashMap<Uuid, Entry>>,
    // Serialises loads so that two first joins to the same room build it once.
    loading: tokio::sync::Mutex<()>,
    // Held while writing: a flush, a version, a restore, an unload. A version reads what the
    // flushes wrote and clears their notes, so none may run in between.
    writer: tokio::sync::Mutex<()>,
    degraded: AtomicBool,
    gate: Gate,
    relay: Option<Relay>,
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

/// A room as the REST API shows it.
pub struct RoomInfo {
    pub files: Vec<FileInfo>,
    /// Each announced presence state, as the peers sent it (only while the room is loaded).
    pub peers: Vec<serde_json::Value>,
    pub updated_at: i64,
}

/// Why a new room is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NewRoomError {
    #[error("file {0:?}: {1}")]
    Path(String, PathError),
    #[error("two files have the same path after normalisation")]
    SamePath,
    #[error("too many files: limit is {0}")]
    TooManyFiles(usize),
    #[error("file {0:?} is larger than {1} bytes")]
    FileTooLarge(String, usize),
    #[error("the files add up to more than {0} bytes")]
    RoomTooLarge(usize),
}

impl NewRoom {
    /// The room with its paths normalised (and sorted), if it keeps to `limits`.
    pub fn validate(mut self, limits: &Limits) -> Result<NewRoom, NewRoomError> {
        for (path, _) in &mut self.files {
            *path = paths::normalize(path).map_err(|e| NewRoomError::Path(path.clone(), e))?;
        }
        self.files.sort();
        if self.files.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(NewRoomError::SamePath);
        }
        if self.files.len() > limits.max_files {
            return Err(NewRoomError::TooManyFiles(limits.max_files));
        }
        if let Some((path, _)) = self
            .files
            .iter()
            .find(|(_, text)| text.len() > limits.max_file_bytes)
        {
            return Err(NewRoomError::FileTooLarge(
                path.clone(),
                limits.max_file_bytes,
            ));
        }
        if self.files.iter().map(|(_, t)| t.len()).sum::<usize>() > limits.max_room_bytes {
            return Err(NewRoomError::RoomTooLarge(limits.max_room_bytes));
        }
        Ok(self)
    }
}

impl Rooms {
    pub fn new(
        store: Store,
        limits: Limits,
        persistence: Persistence,
        history: History,
        metrics: Arc<Metrics>,
        relay: Option<Relay>,
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
                connections: Connections::new(metrics.clone()),
                metrics,
                rooms: Mutex::new(HashMap::new()),
                loading: tokio::sync::Mutex::new(()),
                writer: tokio::sync::Mutex::new(()),
                degraded: AtomicBool::new(false),
                relay,
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

    /// The open WebSocket connections.
    pub fn connections(&self) -> &Connections {
        &self.shared.connections
    }

    pub fn relay(&self) -> Option<&Relay> {
        self.shared.relay.as_ref()
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

    /// The room in memory when it is loaded, or when its stored copies are stale (it is
    /// loaded then, rebuilt from its log): `None` when the stored copies are current.
    async fn current(&self, id: Uuid) -> Result<Option<Arc<Room>>, RoomsError> {
        if let Some(room) = self.loaded(id) {
            return Ok(Some(room));
        }
        if !self.shared.store.copies_stale(id).await? {
            return Ok(None);
        }
        self.get(id).await.map(Some)
    }

    /// What the REST API shows of a room: from memory if it is loaded (with its peers'
    /// presence) or its stored copies are stale, else from the store.
    pub async fn info(&self, meta: &RoomMeta) -> Result<RoomInfo, RoomsError> {
        Ok(match self.current(meta.id).await? {
            Some(room) => RoomInfo {
                files: room.files(),
                peers: room.presence(),
                updated_at: room.updated_at(),
            },
            None => RoomInfo {
                files: self.shared.store.files(meta.id).await?,
                peers: Vec::new(),
                updated_at: meta.updated_at,
            },
        })
    }

    /// A file's text: from memory if the room is loaded or its stored copies are stale, else
    /// from the store.
    pub async fn file_text(&self, id: Uuid, path: &str) -> Result<Option<String>, RoomsError> {
        Ok(match self.current(id).await? {
            Some(room) => room.file_text(path),
            None => self.shared.store.file_text(id, path).await?,
        })
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
    /// Creates a room (see [`NewRoom::validate`]): its metadata, its token, and its files'
    /// paths (normalised).
    pub async fn create(
        &self,
        new: NewRoom,
    ) -> Result<(RoomMeta, String, Vec<String>), RoomsError> {
        let new = new.validate(&self.shared.limits)?;
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
        let paths = new.files.into_iter().map(|(path, _)| path).collect();
        Ok((meta, token, paths))
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
        if stored.copies_stale {
            let copied = self.shared.store.files(id).await?;
            room.copy_all(copied.into_iter().map(|file| file.path));
        }
        let room = match &self.shared.relay {
            Some(relay) => room.relay_through(relay.outlet(id)),
            None => room,
        };
        let room = Arc::new(room);
        self.entries().insert(
            id,
            Entry {
                room: room.clone(),
                since_compaction: stored.updates.len() as u64,
                unversioned,
                versioned_at: Instant::now(),
                secure: false,
            },
        );
        Metrics::inc(&self.shared.metrics.rooms_loaded);
        tracing::info!(room = %id, updates = stored.updates.len(), "room loaded");
        if let Some(relay) = &self.shared.relay {
            // Other nodes holding the room may have updates not written yet: ask them, and
            // wait (briefly) for their answers, so that the first peer here starts from them.
            relay.subscribe(id).await;
            let others = relay.other_holders(id).await;
            room.introduce();
            if others > 0 {
                room.hear_from(others, relay::LOAD_WAIT).await;
            }
        }
        Ok(room)
    }

    /// Takes a place for one more peer in the room across every node (with a relay): `Ok(true)`
    /// when one was taken (give it back with [`Rooms::give_place`]), `Ok(false)` when there is
    /// no relay or Redis does not answer (the room's own count on this node still applies).
    pub async fn take_place(&self, id: Uuid) -> Result<bool, CloseReason> {
        let Some(relay) = &self.shared.relay else {
            return Ok(false);
        };
        let max = self.shared.limits.max_peers;
        match relay.take_place(id, max).await {
            Place::Taken => Ok(true),
            Place::Unknown => Ok(false),
            Place::Full => Err(CloseReason::new(
                close::TRY_AGAIN_LATER,
                format!("room is full ({max} peers)"),
            )),
        }
    }

    pub fn give_place(&self, id: Uuid) {
        if let Some(relay) = self.shared.relay.clone() {
            tokio::spawn(async move { relay.give_place(id).await });
        }
    }

    /// Peers connected to the room: on every node when a relay knows, else on this one.
    pub async fn peer_count(&self, id: Uuid) -> usize {
        if let Some(relay) = &self.shared.relay {
            if let Some(count) = relay.peer_count(id).await {
                return count;
            }
        }
        self.loaded(id).map_or(0, |room| room.peer_count())
    }

    /// Deletes the room everywhere; its peers are disconnected with a reason.
    pub async fn delete(&self, id: Uuid) -> Result<(), RoomsError> {
        if !self.shared.store.delete_room(id).await? {
            return Err(RoomsError::NotFound);
        }
        if let Some(relay) = &self.shared.relay {
            relay.send(id, &Relayed::Deleted);
        }
        self.forget(id, CloseReason::room_deleted()).await;
        tracing::info!(room = %id, "room deleted");
        Ok(())
    }

    /// Drops a room from memory and closes its peers with `reason`.
    async fn forget(&self, id: Uuid, reason: CloseReason) {
        let entry = self.entries().remove(&id);
        if let Some(entry) = entry {
            entry.room.close(reason);
            if let Some(relay) = &self.shared.relay {
                relay.unsubscribe(id).await;
                // Loaded again meanwhile (a peer came back as it unloaded): keep listening.
                if self.loaded(id).is_some() {
                    relay.subscribe(id).await;
                }
            }
        }
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
            if self.flush_all(CopyNow::WhenDue).await {
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
                if e.room.everyone_left() {
                    Some((*id, Reason::Left))
                } else {
                    (e.versioned_at.elapsed() >= interval).then_some((*id, Reason::Interval))
                }
            })
            .collect();
        if due.is_empty() {
            return;
        }
        // A version reads the copies: they are written first.
        let ids: Vec<Uuid> = due.iter().map(|(id, _)| *id).collect();
        if self.flush(CopyNow::Rooms(&ids)).await.is_err() {
            return;
        }
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
            if let Err(e) = self.write_stale_copies(id).await {
                tracing::warn!(room = %id, error = %e, "stale copies not written; tried again at the next sweep");
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

    /// Writes the copies of a room not in memory whose stored copies are stale (a crash left
    /// them so), rebuilt from its log, so that its version sees every edit.
    async fn write_stale_copies(&self, id: Uuid) -> Result<(), RoomsError> {
        let store = &self.shared.store;
        if !store.copies_stale(id).await? {
            return Ok(());
        }
        let Some(stored) = store.load_room(id).await? else {
            return Ok(());
        };
        let copied = store.files(id).await?;
        let limits = self.shared.limits.clone();
        let batch = blocking(|| {
            let room = Room::load(
                stored.meta,
                limits,
                stored.state.as_deref(),
                &stored.updates,
            )?;
            room.copy_all(copied.into_iter().map(|file| file.path));
            Ok::<_, crate::room::RoomError>(room.take_unflushed(true))
        })
        .map_err(|e| RoomsError::Corrupt(e.to_string()))?;
        if let Some(batch) = batch {
            let no_updates: &[Vec<u8>] = &[];
            store.append(&[(id, no_updates, &batch)]).await?;
            tracing::info!(room = %id, files = batch.changed_files.len(), "stale copies written");
        }
        Ok(())
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
            entry.room.versioned();
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
        self.flush(CopyNow::All).await?;
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
        self.flush(CopyNow::All).await?;
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
    pub async fn flush_all(&self, copy_now: CopyNow<'_>) -> bool {
        match self.flush(copy_now).await {
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
    async fn flush(&self, copy_now: CopyNow<'_>) -> Result<(), StoreError> {
        let rooms: Vec<(Uuid, Arc<Room>, u64, bool)> = self
            .entries()
            .iter()
            .map(|(id, e)| (*id, e.room.clone(), e.since_compaction, e.secure))
            .collect();
        let mut due: Vec<(Uuid, Arc<Room>)> = rooms
            .iter()
            .filter(|(.., secure)| *secure)
            .map(|(id, room, ..)| (*id, room.clone()))
            .collect();
        let taken: Vec<_> = rooms
            .into_iter()
            .filter_map(|(id, room, since, _)| {
                let batch = room.take_unflushed(copy_now.includes(id))?;
                Some((id, room, since, batch))
            })
            .collect();
        let rows: Vec<Vec<Vec<u8>>> = taken.iter().map(|(.., b)| b.rows()).collect();
        let writes: Vec<(Uuid, &[Vec<u8>], &FlushBatch)> = taken
            .iter()
            .zip(&rows)
            .map(|((id, .., b), rows)| (*id, rows.as_slice(), b))
            .collect();
        let wrote = !writes.is_empty();
        let (written, failure) = if wrote {
            self.append(&writes).await
        } else {
            (Vec::new(), None)
        };
        drop(writes);
        let metrics = &self.shared.metrics;
        let mut gone = Vec::new();
        for (((id, room, since, batch), rows), written) in taken.into_iter().zip(&rows).zip(written)
        {
            match written {
                Written::No => {
                    room.restore(batch);
                    continue;
                }
                Written::RoomGone => {
                    gone.push(id);
                    continue;
                }
                Written::Yes => {}
            }
            room.flushed();
            // Versions are taken where the room is edited: a node that only copied files
            // other nodes' peers changed leaves them to those nodes.
            if !batch.updates.is_empty() {
                self.mark_unversioned(id);
            }
            metrics
                .updates_written
                .fetch_add(batch.updates.len() as u64, Ordering::Relaxed);
            let count = rows.len() as u64;
            metrics
                .update_rows_written
                .fetch_add(count, Ordering::Relaxed);
            let since = since + count;
            self.set_progress(id, since);
            if since >= self.shared.persistence.compact_after && !due.iter().any(|(d, _)| *d == id)
            {
                due.push((id, room));
            }
        }
        if failure.is_none() && wrote {
            Metrics::inc(&metrics.flushes);
        }
        for id in gone {
            tracing::info!(room = %id, "room no longer in the store (deleted on another node)");
            self.forget(id, CloseReason::room_deleted()).await;
        }
        // Every written room is marked as such before any compaction: a compaction that fails
        // leaves only that room's log long (it is tried again after its next flush).
        for (id, room) in due {
            let snapshot = blocking(|| room.snapshot());
            // The stored rows are folded in: those of other nodes, and any this node wrote
            // while the snapshot was taken (applying an update twice is a no-op).
            match self.shared.store.compact(id, &snapshot).await {
                Ok(_) => {
                    Metrics::inc(&metrics.compactions);
                    self.set_progress(id, 0);
                    if let Some(entry) = self.entries().get_mut(&id) {
                        entry.secure = false;
                    }
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
    /// the others are not held back by it. Returns what became of each batch, and the first
    /// error.
    async fn append(
        &self,
        writes: &[(Uuid, &[Vec<u8>], &FlushBatch)],
    ) -> (Vec<Written>, Option<StoreError>) {
        let store = &self.shared.store;
        match store.append(writes).await {
            Ok(found) => (found.into_iter().map(Written::from).collect(), None),
            Err(e) if e.is_unreachable() || writes.len() == 1 => {
                (writes.iter().map(|_| Written::No).collect(), Some(e))
            }
            Err(e) => {
                tracing::warn!(error = %e, rooms = writes.len(), "group commit failed; writing each room on its own");
                let mut written = Vec::with_capacity(writes.len());
                let mut first = None;
                for write in writes {
                    match store.append(std::slice::from_ref(write)).await {
                        Ok(found) => written.push(Written::from(found[0])),
                        Err(e) => {
                            tracing::warn!(room = %write.0, error = %e, "room not written; kept in memory and retried");
                            written.push(Written::No);
                            first.get_or_insert(e);
                        }
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

    fn set_progress(&self, id: Uuid, since_compaction: u64) {
        if let Some(entry) = self.entries().get_mut(&id) {
            entry.since_compaction = since_compaction;
        }
    }

    /// Unloads rooms that have had no peers for the idle period and have nothing unflushed.
    async fn unload_idle(&self) {
        let idle = self.shared.persistence.idle_unload();
        let ids: Vec<Uuid> = self
            .entries()
            .iter()
            .filter(|(_, e)| {
                e.room.idle_for().is_some_and(|d| d >= idle)
                    && !e.room.has_unflushed()
                    && !e.room.copies_pending()
                    && !e.secure
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            Metrics::inc(&self.shared.metrics.rooms_unloaded);
            tracing::info!(room = %id, "idle room unloaded");
            self.forget(id, CloseReason::new(close::GOING_AWAY, "room unloaded"))
                .await;
        }
    }

    /// Runs the relay (with `--redis-url`) until `shutdown` fires: publishes what the rooms
    /// send, delivers what the other nodes send, and every second sends each room's heartbeat,
    /// forgets the nodes that fell silent and announces this node's peer counts.
    pub async fn run_relay(self, shutdown: watch::Receiver<bool>) {
        let Some(relay) = self.shared.relay.clone() else {
            return;
        };
        let publisher = tokio::spawn(relay.clone().run_publisher(shutdown.clone()));
        let heartbeats = tokio::spawn(self.clone().run_heartbeats(shutdown.clone()));
        let (listed, reconnected, delivered) = (self.clone(), self.clone(), self.clone());
        relay
            .run_subscriber(
                shutdown,
                move || listed.entries().keys().copied().collect(),
                move || reconnected.reconnected(),
                move |room, origin, message| delivered.deliver(room, origin, message),
            )
            .await;
        let _ = publisher.await;
        let _ = heartbeats.await;
    }

    async fn run_heartbeats(self, mut shutdown: watch::Receiver<bool>) {
        let Some(relay) = self.shared.relay.clone() else {
            return;
        };
        let mut ticks = tokio::time::interval(relay::HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => return,
            }
            let rooms: Vec<(Uuid, Arc<Room>)> = self
                .entries()
                .iter()
                .map(|(id, e)| (*id, e.room.clone()))
                .collect();
            let mut counts = Vec::with_capacity(rooms.len());
            for (id, room) in rooms {
                relay.send(id, &room.heartbeat());
                if room.forget_silent(relay::SILENCE) {
                    if let Some(entry) = self.entries().get_mut(&id) {
                        entry.secure = true;
                    }
                }
                counts.push((id, room.peer_count()));
            }
            relay.announce(&counts).await;
        }
    }

    /// Back on Redis after an outage: introduce every room again (what was missed either way
    /// is repaired by the answers), and close the rooms deleted meanwhile.
    fn reconnected(&self) {
        let rooms: Vec<(Uuid, Arc<Room>)> = self
            .entries()
            .iter()
            .map(|(id, e)| (*id, e.room.clone()))
            .collect();
        for (_, room) in &rooms {
            room.introduce();
        }
        let this = self.clone();
        tokio::spawn(async move {
            for (id, _) in rooms {
                if let Ok(None) = this.shared.store.room_meta(id).await {
                    tracing::info!(room = %id, "room deleted while this node was cut off");
                    this.forget(id, CloseReason::room_deleted()).await;
                }
            }
        });
    }

    fn deliver(&self, id: Uuid, origin: NodeId, message: Relayed) {
        if message == Relayed::Deleted {
            let this = self.clone();
            tokio::spawn(async move { this.forget(id, CloseReason::room_deleted()).await });
            return;
        }
        if let Some(room) = self.loaded(id) {
            if room.relayed(origin, message) {
                Metrics::inc(&self.shared.metrics.relay_repairs);
            }
        }
    }

    /// Closes every connection with a proper close frame and writes everything, retrying for
    /// a while if the database is away.
    async fn shutdown(&self) {
        let rooms: Vec<Arc<Room>> = self.entries().values().map(|e| e.room.clone()).collect();
        for room in &rooms {
            room.close(CloseReason::new(close::GOING_AWAY, "server shutting down"));
            // Updates of other nodes not confirmed as written are written here too: this
            // node may be the last to hold them.
            if room.holds_unconfirmed() {
                if let Some(entry) = self.entries().get_mut(&room.meta.id) {
                    entry.secure = true;
                }
            }
        }
        for attempt in 1..=10 {
            if self.flush_all(CopyNow::All).await {
                tracing::info!(rooms = rooms.len(), "all rooms flushed");
                // Every peer is gone: each edited room gets its version.
                self.take_due_versions().await;
                break;
            }
            tracing::warn!(attempt, "final flush failed; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The other nodes learn at once that everything of this node's is written.
        if let Some(relay) = &self.shared.relay {
            for room in &rooms {
                relay.publish(room.meta.id, &room.heartbeat()).await;
            }
        }
        self.shared.store.close().await;
    }
}

/// Whose plain-text copies a flush writes even though they are not due yet (see
/// [`Room::take_unflushed`]).
#[derive(Clone, Copy)]
pub enum CopyNow<'a> {
    WhenDue,
    All,
    Rooms(&'a [Uuid]),
}

impl CopyNow<'_> {
    fn includes(self, id: Uuid) -> bool {
        match self {
            CopyNow::WhenDue => false,
            CopyNow::All => true,
            CopyNow::Rooms(ids) => ids.contains(&id),
        }
    }
}

/// What became of one room's batch in a group commit.
enum Written {
    Yes,
    No,
    /// The room is no longer in the store.
    RoomGone,
}

impl From<bool> for Written {
    fn from(found: bool) -> Written {
        if found {
            Written::Yes
        } else {
            Written::RoomGone
        }
    }
}
