-- imstore PostgreSQL schema, version 3: the feed's purge low-water mark, attachment reference
-- counts, and the outbox of released attachment keys.

-- The highest change-event seq the purge ever removed in the conversation (0 when none). The
-- purge raises it (GREATEST) in the transaction that deletes the events, so a reader sees both
-- or neither; `changes` reads it with the head, and core turns a cursor below it into a resync.
ALTER TABLE conversations ADD COLUMN purged_through bigint NOT NULL DEFAULT 0
    CHECK (purged_through >= 0 AND purged_through <= feed_seq);

-- How many stored messages, in any conversation, reference each attachment key. An insert adds
-- its rows' counts in the statement that inserts them; the purge subtracts the messages it
-- removes in its transaction, deleting a key's row when it reaches zero: that key is released.
-- One row per live key, so the purge's "is it still referenced" is a primary-key lookup, never
-- a scan, and concurrent inserts and purges of one key serialize on its row.
CREATE TABLE attachments (
    attachment_key text   PRIMARY KEY,
    refs           bigint NOT NULL CHECK (refs > 0)
);
INSERT INTO attachments (attachment_key, refs)
    SELECT attachment_key, count(*) FROM messages WHERE attachment_key IS NOT NULL
    GROUP BY attachment_key;

-- Keys a purge released, written in the transaction that removed their last message, so that a
-- purger that dies after committing does not lose them. `owner` is the releasing (or reporting)
-- transaction's id: the call that reported the key deletes its own entries once its transaction
-- has committed; an entry still here `released_at` + the lease later is reported again by a
-- later purge call, which takes it over (see purge.rs: keys are reported at least once).
CREATE TABLE released_attachments (
    attachment_key text   PRIMARY KEY,
    owner          bigint NOT NULL,
    released_at    bigint NOT NULL
);
CREATE INDEX released_attachments_by_age ON released_attachments (released_at);
