-- A file's row in a version may be a patch on the file's row before it, instead of its whole
-- text: the text is the earlier text's first `keep_head` bytes, then `content`, then its last
-- `keep_tail` bytes. Both NULL: `content` is the whole text (NULL: the file was removed). See
-- docs/history.md.
ALTER TABLE room_version_files ADD COLUMN keep_head BIGINT;
ALTER TABLE room_version_files ADD COLUMN keep_tail BIGINT;
