//! Persistence: one interface over PostgreSQL and SQLite.
//!
//! Both databases hold the same tables (see `migrations/`): rooms with their compacted CRDT
//! state, the log of updates written since, a plain-text copy of each file, and the rooms'
//! versions (their queries are in [`crate::history`]). Every query
//! is portable SQL run through sqlx's `Any` driver, so both back ends run the same code and the
//! same tests; only the migration files differ (`BYTEA` against `BLOB`).

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use uuid::Uuid;

use crate::blocking::blocking;
use crate::room::{union_of, FileInfo, FlushBatch, RoomMeta};

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported DATABASE_URL scheme (use postgres:// or sqlite://)")]
    UnsupportedUrl,
    #[error("the stored room state is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The database did not answer (down, restarting, unreachable): trying again later may
    /// work, unlike a wrong URL, wrong credentials or a failed migration.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A cheap handle on the database pool.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
}

/// Everything needed to bring a room back into memory.
pub struct StoredRoom {
    pub meta: RoomMeta,
    pub state: Option<Vec<u8>>,
    pub updates: Vec<Vec<u8>>,
    /// The stored plain-text copies may lag behind the updates.
    pub copies_stale: bool,
}

impl Store {
    /// Opens the database at `url`, creating an SQLite file if needed, and migrates it.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Postgres => 8,
                // One writer at a time is all SQLite allows; more connections only queue on
                // its lock.
                Backend::Sqlite => 4,
            })
            // While the database is away, fail fast: the flusher keeps the updates and retries.
            .acquire_timeout(Duration::from_secs(3))
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        match backend {
            Backend::Postgres => POSTGRES.run(&pool).await?,
            Backend::Sqlite => SQLITE.run(&pool).await?,
        }
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Answers when the database does.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn create_room(
        &self,
        meta: &RoomMeta,
        state: &[u8],
        files: &[(String, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO rooms (id, name, language, token_hash, created_at, updated_at, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(meta.id.to_string())
        .bind(meta.name.clone())
        .bind(meta.language.clone())
        .bind(meta.token_hash.clone())
        .bind(meta.created_at)
        .bind(meta.updated_at)
        .bind(state.to_vec())
        .execute(&mut *tx)
        .await?;
        upsert_files(&mut tx, meta.id, files).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn room_meta(&self, id: Uuid) -> Result<Option<RoomMeta>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, language, token_hash, created_at, updated_at FROM rooms WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| meta_from_row(id, &row)).transpose()
    }

    pub async fn load_room(&self, id: Uuid) -> Result<Option<StoredRoom>, StoreError> {
        let Some(meta) = self.room_meta(id).await? else {
            return Ok(None);
        };
        let key = id.to_string();
        let row = sqlx::query("SELECT state, copies_stale FROM rooms WHERE id = $1")
            .bind(&key)
            .fetch_one(&self.pool)
            .await?;
        let state: Option<Vec<u8>> = row.try_get(0)?;
        let copies_stale: i64 = row.try_get(1)?;
        let rows = sqlx::query("SELECT data FROM room_updates WHERE room_id = $1 ORDER BY seq")
            .bind(&key)
            .fetch_all(&self.pool)
            .await?;
        let updates = rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        Ok(Some(StoredRoom {
            meta,
            state,
            updates,
            copies_stale: copies_stale != 0,
        }))
    }

    /// The room's plain-text copies may lag behind its update log (see [`Store::append`]).
    pub async fn copies_stale(&self, id: Uuid) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT copies_stale FROM rooms WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let stale: Option<i64> = row.map(|row| row.try_get(0)).transpose()?;
        Ok(stale.is_some_and(|stale| stale != 0))
    }

    /// The stored plain-text copies: what the REST API shows for a room not in memory.
    pub async fn files(&self, id: Uuid) -> Result<Vec<FileInfo>, StoreError> {
        let rows =
            sqlx::query("SELECT path, size FROM room_files WHERE room_id = $1 ORDER BY path")
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                let size: i64 = row.try_get(1)?;
                Ok(FileInfo {
                    path: row.try_get(0)?,
                    size: size as usize,
                })
            })
            .collect()
    }

    pub async fn file_text(&self, id: Uuid, path: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT content FROM room_files WHERE room_id = $1 AND path = $2")
            .bind(id.to_string())
            .bind(path)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
    }

    /// Appends each room's rows of updates and changed file copies, and notes those files and
    /// their authors for the next version, all in one transaction: one write per flush, never
    /// one per keystroke. A batch without the copies of every changed file marks the room's
    /// copies stale in the same transaction; one with them marks them current. Returns, for each room, whether it still
    /// exists: a room deleted meanwhile (by another node perhaps) gets none of its rows
    /// written.
    ///
    /// Several nodes may write the same room: each room's row is updated first, which in
    /// PostgreSQL locks it until the commit, so the next sequence numbers are read and taken by
    /// one writer at a time. Rooms go in the order of their ids, so that two group commits
    /// never wait for each other's locks.
    pub async fn append(
        &self,
        batches: &[(Uuid, &[Vec<u8>], &FlushBatch)],
    ) -> Result<Vec<bool>, StoreError> {
        let mut order: Vec<usize> = (0..batches.len()).collect();
        order.sort_by_key(|&i| batches[i].0);
        let mut found = vec![false; batches.len()];
        let mut tx = self.pool.begin().await?;
        for i in order {
            let (id, rows, batch) = batches[i];
            let key = id.to_string();
            let updated = sqlx::query(
                "UPDATE rooms SET updated_at = CASE WHEN updated_at < $1 THEN $1 ELSE updated_at END, \
                 copies_stale = $2 WHERE id = $3",
            )
            .bind(batch.updated_at)
            .bind(i64::from(!batch.copies))
            .bind(&key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                continue;
            }
            let base: i64 =
                sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM room_updates WHERE room_id = $1")
                    .bind(&key)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
            for (n, update) in rows.iter().enumerate() {
                sqlx::query("INSERT INTO room_updates (room_id, seq, data) VALUES ($1, $2, $3)")
                    .bind(&key)
                    .bind(base + 1 + n as i64)
                    .bind(update.clone())
                    .execute(&mut *tx)
                    .await?;
            }
            upsert_files(&mut tx, id, &batch.changed_files).await?;
            for path in &batch.removed_files {
                sqlx::query("DELETE FROM room_files WHERE room_id = $1 AND path = $2")
                    .bind(&key)
                    .bind(path)
                    .execute(&mut *tx)
                    .await?;
            }
            let written = batch.changed_files.iter().map(|(path, _)| path);
            Store::note_unversioned(
                &mut tx,
                id,
                written.chain(&batch.removed_files),
                &batch.authors,
            )
            .await?;
            found[i] = true;
        }
        tx.commit().await?;
        Ok(found)
    }

    /// Rewrites the room's stored state as one snapshot: the union of the stored state, every
    /// row of the update log and `snapshot` (the writer's whole document), then drops the
    /// rows. Rows that other nodes wrote, which this node may not have seen yet, are folded in,
    /// never lost. False when the room no longer exists.
    pub async fn compact(&self, id: Uuid, snapshot: &[u8]) -> Result<bool, StoreError> {
        let key = id.to_string();
        let mut tx = self.pool.begin().await?;
        // The room's row first: other writers of this room wait until the commit.
        let found = sqlx::query("UPDATE rooms SET updated_at = updated_at WHERE id = $1")
            .bind(&key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if found == 0 {
            return Ok(false);
        }
        let state: Option<Vec<u8>> = sqlx::query("SELECT state FROM rooms WHERE id = $1")
            .bind(&key)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let rows = sqlx::query("SELECT data FROM room_updates WHERE room_id = $1 ORDER BY seq")
            .bind(&key)
            .fetch_all(&mut *tx)
            .await?;
        let mut parts: Vec<Vec<u8>> = state.into_iter().collect();
        for row in rows {
            parts.push(row.try_get(0)?);
        }
        parts.push(snapshot.to_vec());
        let state =
            blocking(|| union_of(&parts)).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query("UPDATE rooms SET state = $1 WHERE id = $2")
            .bind(state)
            .bind(&key)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM room_updates WHERE room_id = $1")
            .bind(&key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes a room and everything stored for it. False when there was no such room.
    pub async fn delete_room(&self, id: Uuid) -> Result<bool, StoreError> {
        let key = id.to_string();
        let mut tx = self.pool.begin().await?;
        // Children first: SQLite enforces foreign keys only when asked to, per connection.
        for table in [
            "room_updates",
            "room_files",
            "room_versions",
            "room_version_files",
            "room_unversioned",
            "room_unversioned_authors",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE room_id = $1"))
                .bind(&key)
                .execute(&mut *tx)
                .await?;
        }
        let deleted = sqlx::query("DELETE FROM rooms WHERE id = $1")
            .bind(&key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted > 0)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn upsert_files(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: Uuid,
    files: &[(String, String)],
) -> Result<(), StoreError> {
    for (path, text) in files {
        sqlx::query(
            "INSERT INTO room_files (room_id, path, content, size) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (room_id, path) DO UPDATE SET content = excluded.content, size = excluded.size",
        )
        .bind(id.to_string())
        .bind(path)
        .bind(text)
        .bind(text.len() as i64)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn meta_from_row(id: Uuid, row: &AnyRow) -> Result<RoomMeta, StoreError> {
    Ok(RoomMeta {
        id,
        name: row.try_get(1)?,
        language: row.try_get(2)?,
        token_hash: row.try_get(3)?,
        created_at: row.try_get(4)?,
        updated_at: row.try_get(5)?,
    })
}
