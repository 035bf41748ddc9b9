-- The same schema as ../postgres, with SQLite's BLOB for binary columns.
CREATE TABLE rooms (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    language    TEXT,
    token_hash  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    -- The merged document as one Yjs update (v1 encoding) as of the last compaction.
    state       BLOB
);

CREATE TABLE room_updates (
    room_id  TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq      BIGINT NOT NULL,
    data     BLOB NOT NULL,
    PRIMARY KEY (room_id, seq)
);

CREATE TABLE room_files (
    room_id  TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    path     TEXT NOT NULL,
    content  TEXT NOT NULL,
    size     BIGINT NOT NULL,
    PRIMARY KEY (room_id, path)
);
