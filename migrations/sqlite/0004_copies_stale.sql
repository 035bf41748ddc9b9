-- 1 while the room's plain-text copies (room_files) may lag behind its update log: a flush
-- that writes updates without the copies of the files they change sets it in the same
-- transaction, one that writes every changed file's copy clears it. Readers of a stale room
-- rebuild its text from the log instead (see docs/design.md, "Persistence").
ALTER TABLE rooms ADD COLUMN copies_stale BIGINT NOT NULL DEFAULT 0;
