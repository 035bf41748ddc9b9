//! Versions of a room: what they hold, and how the store keeps them.
//!
//! A version is taken from what the store already has — the plain-text copies of the files that
//! every flush writes — so taking one never touches a room's document or its lock. Each flush
//! also notes, in the same transaction, which files it wrote and who edited them
//! (`room_unversioned*`); the next version stores the text of only those of them that differ
//! from the version before (a room's first version: of every file), and clears the notes. A file's text at version N is its row with the
//! greatest `since` at or below N. Pruning drops the oldest versions and the rows that no kept
//! version needs. The tables are in `migrations/*/0002_versions.sql`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use crate::span::differing_span;
use crate::store::{Store, StoreError};

/// Why a version was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// The room had been edited for the version interval.
    Interval,
    /// The last peer left (or the server stopped).
    Left,
    /// Just before a restore, so that the restore can itself be undone.
    Restore,
    /// Someone asked for it (`POST /rooms/{id}/versions`), usually with a label.
    Request,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Interval => "interval",
            Reason::Left => "left",
            Reason::Restore => "restore",
            Reason::Request => "request",
        }
    }

    fn parse(text: &str) -> Reason {
        match text {
            "interval" => Reason::Interval,
            "left" => Reason::Left,
            "restore" => Reason::Restore,
            _ => Reason::Request,
        }
    }
}

/// How a file changed since the version before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Changed,
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    pub path: String,
    pub change: Change,
}

/// One version, as the REST API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    pub id: i64,
    pub created_at: i64,
    pub reason: Reason,
    pub label: Option<String>,
    /// Who edited since the version before (awareness `user.name`; `anonymous` without one).
    pub authors: Vec<String>,
    /// The files that changed since the version before.
    pub files: Vec<FileChange>,
}

/// What a new version is to be.
#[derive(Clone, Copy)]
pub struct Take<'a> {
    pub reason: Reason,
    pub label: Option<&'a str>,
    /// Texts newer than the store's copies (a file's text just before a restore replaced it;
    /// `None`: the file did not exist).
    pub overrides: &'a [(String, Option<String>)],
    /// Take it even when nothing changed (a label is worth keeping on its own).
    pub always: bool,
    pub now: i64,
}

/// How many versions to keep: at most `count` (0: no limit), none older than `since` (a time in
/// Unix milliseconds, or `None`). The newest version is always kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub count: u64,
    pub since: Option<i64>,
}

impl Store {
    /// Notes, inside a flush's transaction, the files it wrote and who edited them: the next
    /// version looks at those.
    pub(crate) async fn note_unversioned(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: Uuid,
        paths: impl Iterator<Item = &String>,
        authors: &[String],
    ) -> Result<(), StoreError> {
        let key = id.to_string();
        let paths: Vec<&str> = paths.map(String::as_str).collect();
        let names: Vec<&str> = authors.iter().map(String::as_str).collect();
        for (table, column, values) in [
            ("room_unversioned", "path", paths),
            ("room_unversioned_authors", "name", names),
        ] {
            let sql = format!(
                "INSERT INTO {table} (room_id, {column}) VALUES ($1, $2) \
                 ON CONFLICT (room_id, {column}) DO NOTHING"
            );
            for value in values {
                sqlx::query(&sql)
                    .bind(&key)
                    .bind(value)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// True when files were written since the room's last version.
    pub async fn has_unversioned(&self, id: Uuid) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM room_unversioned WHERE room_id = $1 LIMIT 1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Rooms with files written since their last version, with a version older than `time`
    /// (Unix milliseconds), or with stale copies (left by a crash).
    pub async fn rooms_to_sweep(&self, time: i64) -> Result<Vec<Uuid>, StoreError> {
        let rows = sqlx::query(
            "SELECT room_id FROM room_unversioned \
             UNION SELECT room_id FROM room_versions WHERE created_at < $1 \
             UNION SELECT id FROM rooms WHERE copies_stale <> 0",
        )
        .bind(time)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|row| row.try_get::<String, _>(0).ok()?.parse().ok())
            .collect())
    }

    /// Takes a version of the room from the stored copies of the files written since the last
    /// one. `None` when none of them differs from it and `take.always` is false.
    pub async fn take_version(
        &self,
        id: Uuid,
        take: Take<'_>,
    ) -> Result<Option<Version>, StoreError> {
        let key = id.to_string();
        let mut tx = self.pool.begin().await?;
        // A room's first version looks at every file it has.
        let first = sqlx::query("SELECT 1 FROM room_versions WHERE room_id = $1 LIMIT 1")
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await?
            .is_none();
        let notes = match first {
            true => {
                "SELECT path FROM room_files WHERE room_id = $1 \
                     UNION SELECT path FROM room_unversioned WHERE room_id = $1"
            }
            false => "SELECT path FROM room_unversioned WHERE room_id = $1",
        };
        let mut paths = noted(&mut tx, notes, &key).await?;
        let overrides: BTreeMap<&str, Option<&str>> = take
            .overrides
            .iter()
            .map(|(path, text)| (path.as_str(), text.as_deref()))
            .collect();
        paths.extend(overrides.keys().map(|path| path.to_string()));
        let authors: Vec<String> = noted(
            &mut tx,
            "SELECT name FROM room_unversioned_authors WHERE room_id = $1",
            &key,
        )
        .await?
        .into_iter()
        .collect();

        let mut rows = Vec::new();
        for path in paths {
            let now: Option<String> = match overrides.get(path.as_str()) {
                Some(text) => text.map(str::to_string),
                None => {
                    sqlx::query("SELECT content FROM room_files WHERE room_id = $1 AND path = $2")
                        .bind(&key)
                        .bind(&path)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|row| row.try_get(0))
                        .transpose()?
                }
            };
            let (before, patches) = text_at(&mut tx, &key, &path, i64::MAX).await?;
            let change = match (&before, &now) {
                (None, None) => continue,
                (Some(a), Some(b)) if a == b => continue,
                (None, Some(_)) => Change::Added,
                (Some(_), None) => Change::Removed,
                (Some(_), Some(_)) => Change::Changed,
            };
            let stored = match (before, now) {
                (_, None) => Stored::Removed,
                (Some(before), Some(now)) if patches < MAX_PATCHES => Stored::patch(&before, now),
                (_, Some(now)) => Stored::Whole(now),
            };
            rows.push((FileChange { path, change }, stored));
        }
        for table in ["room_unversioned", "room_unversioned_authors"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE room_id = $1"))
                .bind(&key)
                .execute(&mut *tx)
                .await?;
        }
        if rows.is_empty() && !take.always {
            tx.commit().await?;
            return Ok(None);
        }
        let seq: i64 =
            sqlx::query("SELECT COALESCE(MAX(seq), 0) + 1 FROM room_versions WHERE room_id = $1")
                .bind(&key)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        let files: Vec<FileChange> = rows.iter().map(|(file, _)| file.clone()).collect();
        sqlx::query(
            "INSERT INTO room_versions (room_id, seq, created_at, reason, label, authors, files) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key)
        .bind(seq)
        .bind(take.now)
        .bind(take.reason.as_str())
        .bind(take.label)
        .bind(serde_json::to_string(&authors).expect("names serialise"))
        .bind(serde_json::to_string(&files).expect("changes serialise"))
        .execute(&mut *tx)
        .await?;
        for (file, stored) in &rows {
            let (content, head, tail) = stored.columns();
            sqlx::query(
                "INSERT INTO room_version_files (room_id, path, since, content, keep_head, keep_tail) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&key)
            .bind(&file.path)
            .bind(seq)
            .bind(content)
            .bind(head)
            .bind(tail)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(Version {
            id: seq,
            created_at: take.now,
            reason: take.reason,
            label: take.label.map(str::to_string),
            authors,
            files,
        }))
    }

    /// The room's versions, newest first: at most `limit`, older than `before` if given.
    pub async fn versions(
        &self,
        id: Uuid,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Version>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, created_at, reason, label, authors, files FROM room_versions \
             WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
        )
        .bind(id.to_string())
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_from_row).collect()
    }

    pub async fn version(&self, id: Uuid, seq: i64) -> Result<Option<Version>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, created_at, reason, label, authors, files FROM room_versions \
             WHERE room_id = $1 AND seq = $2",
        )
        .bind(id.to_string())
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    /// A file's text at a version (`None`: it did not exist then).
    pub async fn version_text(
        &self,
        id: Uuid,
        seq: i64,
        path: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(text_at(&mut conn, &id.to_string(), path, seq).await?.0)
    }

    /// Every file of a version with its text, sorted by path.
    pub async fn version_files(
        &self,
        id: Uuid,
        seq: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let key = id.to_string();
        let mut conn = self.pool.acquire().await?;
        let paths = paths_before(&mut conn, &key, seq + 1).await?;
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            if let (Some(text), _) = text_at(&mut conn, &key, &path, seq).await? {
                files.push((path, text));
            }
        }
        Ok(files)
    }

    /// Drops the versions `keep` does not keep, and the file texts only they needed. Returns
    /// how many versions were dropped.
    pub async fn prune_versions(&self, id: Uuid, keep: Retention) -> Result<u64, StoreError> {
        let key = id.to_string();
        let mut tx = self.pool.begin().await?;
        let newest: Option<i64> =
            sqlx::query("SELECT MAX(seq) FROM room_versions WHERE room_id = $1")
                .bind(&key)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        let Some(newest) = newest else {
            return Ok(0);
        };
        // The oldest version kept.
        let mut first = 1;
        if keep.count > 0 {
            first = first.max(newest - keep.count as i64 + 1);
        }
        if let Some(since) = keep.since {
            let young: Option<i64> = sqlx::query(
                "SELECT MIN(seq) FROM room_versions WHERE room_id = $1 AND created_at >= $2",
            )
            .bind(&key)
            .bind(since)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            first = first.max(young.unwrap_or(newest));
        }
        let dropped = sqlx::query("DELETE FROM room_versions WHERE room_id = $1 AND seq < $2")
            .bind(&key)
            .bind(first)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if dropped > 0 {
            // Each file's text at the first version kept is stored whole, for the rows after it
            // to build on.
            for path in paths_before(&mut tx, &key, first).await? {
                let (text, patches) = text_at(&mut tx, &key, &path, first).await?;
                if let (Some(text), 1..) = (text, patches) {
                    sqlx::query(
                        "UPDATE room_version_files SET content = $1, keep_head = NULL, \
                         keep_tail = NULL WHERE room_id = $2 AND path = $3 AND since = \
                         (SELECT MAX(since) FROM room_version_files \
                          WHERE room_id = $2 AND path = $3 AND since <= $4)",
                    )
                    .bind(text)
                    .bind(&key)
                    .bind(&path)
                    .bind(first)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            // Of a file's rows older than the first version kept, only the newest is needed
            // (it is that file's text then), and not even that one if it says "removed".
            sqlx::query(
                "DELETE FROM room_version_files WHERE room_id = $1 AND since < $2 AND EXISTS \
                 (SELECT 1 FROM room_version_files AS later \
                  WHERE later.room_id = room_version_files.room_id \
                  AND later.path = room_version_files.path \
                  AND later.since > room_version_files.since AND later.since <= $2)",
            )
            .bind(&key)
            .bind(first)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM room_version_files WHERE room_id = $1 AND since < $2 \
                 AND content IS NULL AND keep_head IS NULL",
            )
            .bind(&key)
            .bind(first)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(dropped)
    }
}

/// Rows of a file between two whole texts, at most: reading a version applies at most this many
/// patches.
const MAX_PATCHES: usize = 32;

/// A file's row in a version.
enum Stored {
    Whole(String),
    /// The row before's first `head` bytes, `middle`, then its last `tail` bytes.
    Patch {
        head: usize,
        middle: String,
        tail: usize,
    },
    Removed,
}

impl Stored {
    /// `now` as a patch on `before`, or whole when a patch would not be much smaller.
    fn patch(before: &str, now: String) -> Stored {
        let (head, removed, middle) = differing_span(before, &now);
        if middle.len() + 64 >= now.len() {
            return Stored::Whole(now);
        }
        Stored::Patch {
            head,
            middle: middle.to_string(),
            tail: before.len() - head - removed,
        }
    }

    /// `content`, `keep_head`, `keep_tail`.
    fn columns(&self) -> (Option<&str>, Option<i64>, Option<i64>) {
        match self {
            Stored::Whole(text) => (Some(text), None, None),
            Stored::Patch { head, middle, tail } => {
                (Some(middle), Some(*head as i64), Some(*tail as i64))
            }
            Stored::Removed => (None, None, None),
        }
    }
}

/// A file's text at version `seq` (`None`: it did not exist then), and how many patches were
/// applied to reach it from a whole text.
async fn text_at(
    conn: &mut sqlx::AnyConnection,
    key: &str,
    path: &str,
    seq: i64,
) -> Result<(Option<String>, usize), StoreError> {
    // A whole text (or a removal) is never more than MAX_PATCHES rows back.
    let rows = sqlx::query(
        "SELECT content, keep_head, keep_tail FROM room_version_files \
         WHERE room_id = $1 AND path = $2 AND since <= $3 ORDER BY since DESC LIMIT $4",
    )
    .bind(key)
    .bind(path)
    .bind(seq)
    .bind(MAX_PATCHES as i64 + 1)
    .fetch_all(&mut *conn)
    .await?;
    let mut patches = Vec::new();
    let mut text = None;
    for row in &rows {
        let content: Option<String> = row.try_get(0)?;
        let head: Option<i64> = row.try_get(1)?;
        let tail: Option<i64> = row.try_get(2)?;
        match (content, head, tail) {
            (Some(middle), Some(head), Some(tail)) => {
                patches.push((head as usize, middle, tail as usize))
            }
            (content, _, _) => {
                text = Some(content);
                break;
            }
        }
    }
    let Some(mut text) = text else {
        return match rows.is_empty() {
            true => Ok((None, 0)),
            false => Err(corrupt(path)),
        };
    };
    let applied = patches.len();
    for (head, middle, tail) in patches.into_iter().rev() {
        let before = text.ok_or_else(|| corrupt(path))?;
        let fits = head + tail <= before.len()
            && before.is_char_boundary(head)
            && before.is_char_boundary(before.len() - tail);
        if !fits {
            return Err(corrupt(path));
        }
        text = Some(format!(
            "{}{middle}{}",
            &before[..head],
            &before[before.len() - tail..]
        ));
    }
    Ok((text, applied))
}

fn corrupt(path: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(format!(
        "the stored versions of {path:?} do not add up"
    )))
}

/// The paths with a row before version `seq`.
async fn paths_before(
    conn: &mut sqlx::AnyConnection,
    key: &str,
    seq: i64,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT DISTINCT path FROM room_version_files WHERE room_id = $1 AND since < $2 \
         ORDER BY path",
    )
    .bind(key)
    .bind(seq)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?)
}

/// The strings a query of the notes returns, sorted here (databases' collations differ).
async fn noted(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    sql: &str,
    key: &str,
) -> Result<BTreeSet<String>, StoreError> {
    let rows = sqlx::query(sql).bind(key).fetch_all(&mut **tx).await?;
    Ok(rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?)
}

fn version_from_row(row: &sqlx::any::AnyRow) -> Result<Version, StoreError> {
    let reason: String = row.try_get(2)?;
    let authors: String = row.try_get(4)?;
    let files: String = row.try_get(5)?;
    Ok(Version {
        id: row.try_get(0)?,
        created_at: row.try_get(1)?,
        reason: Reason::parse(&reason),
        label: row.try_get(3)?,
        authors: serde_json::from_str(&authors).unwrap_or_default(),
        files: serde_json::from_str(&files).unwrap_or_default(),
    })
}
