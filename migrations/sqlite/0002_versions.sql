-- The same schema as ../postgres.
-- Versions of each room (see docs/history.md). A version is a row of room_versions; the text of
-- its files is stored only for the files that changed since the version before it, in
-- room_version_files: a file's text at version N is its row with the greatest `since` <= N
-- (no row, or a NULL text: the file did not exist then). Times are Unix milliseconds.
CREATE TABLE room_versions (
    room_id     TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    -- Numbered from 1 in each room.
    seq         BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    -- Why it was taken: interval, left, restore, request.
    reason      TEXT NOT NULL,
    label       TEXT,
    -- JSON: the names of the peers who edited since the version before, sorted.
    authors     TEXT NOT NULL,
    -- JSON: [{"path", "change": "added" | "changed" | "removed"}] since the version before.
    files       TEXT NOT NULL,
    PRIMARY KEY (room_id, seq)
);

CREATE TABLE room_version_files (
    room_id  TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    path     TEXT NOT NULL,
    since    BIGINT NOT NULL,
    content  TEXT,
    PRIMARY KEY (room_id, path, since)
);

-- What the next version must look at: the files written since the last one (a flush adds their
-- paths), and who edited them. Kept in the database so that a crash loses none of it.
CREATE TABLE room_unversioned (
    room_id  TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    path     TEXT NOT NULL,
    PRIMARY KEY (room_id, path)
);

CREATE TABLE room_unversioned_authors (
    room_id  TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    name     TEXT NOT NULL,
    PRIMARY KEY (room_id, name)
);

-- Rooms that exist already: their first version holds every file.
INSERT INTO room_unversioned (room_id, path) SELECT room_id, path FROM room_files;
