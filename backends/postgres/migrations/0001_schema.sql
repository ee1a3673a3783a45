-- imstore PostgreSQL schema, version 1.
--
-- Unqualified names: the store connects with `search_path` set to its schema, so the same
-- migration creates these tables in whichever schema the store was configured with.
-- Times are bigint milliseconds decided by the store's injected clock, never by now().

-- One row per conversation that has ever had a transition or a legal hold. `feed_seq` is the last
-- change-event seq handed out; the row is never deleted, so cursors stay valid after a purge.
-- Updating `feed_seq` takes this row's lock until commit: that serializes the conversation's
-- feed writers, so seq order is commit order.
CREATE TABLE conversations (
    conversation_id text    PRIMARY KEY,
    feed_seq        bigint  NOT NULL DEFAULT 0 CHECK (feed_seq >= 0),
    legal_hold      boolean NOT NULL DEFAULT false
);

-- The messages. PK (conversation_id, msg_id) serves the point read (Index Scan) and both page
-- directions (forward / backward index scan, no Sort): msg_id is time-ordered.
CREATE TABLE messages (
    conversation_id text     NOT NULL,
    msg_id          bigint   NOT NULL CHECK (msg_id > 0),
    sender_id       text     NOT NULL,
    msg_type        integer  NOT NULL,
    -- Only ever the codec's output: compressed and/or encrypted envelope.
    content         bytea    NOT NULL,
    attachment_key  text,
    attachment_size bigint,
    attachment_mime text,
    -- The article's values: 0 Normal, 1 Recalled, 2 Deleted.
    status          smallint NOT NULL DEFAULT 0 CHECK (status IN (0, 1, 2)),
    -- Compare-and-set token: starts at 1, +1 on every status change.
    version         bigint   NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at      bigint   NOT NULL,
    recalled_at     bigint,
    recalled_by     text,
    restored_at     bigint,
    deleted_at      bigint,
    deleted_by      text,
    PRIMARY KEY (conversation_id, msg_id),
    CHECK ((attachment_key IS NULL) = (attachment_size IS NULL)
       AND (attachment_key IS NULL) = (attachment_mime IS NULL))
);

-- Purge candidates. Partial indexes stay as small as the recalled / deleted population (a tiny
-- fraction of all messages) and match the purge predicates `status = 1 AND recalled_at <= $cutoff`
-- and `status = 2 AND deleted_at <= $cutoff`, so the purge reads only expired rows.
CREATE INDEX messages_purge_recalled ON messages (recalled_at) WHERE status = 1;
CREATE INDEX messages_purge_deleted  ON messages (deleted_at)  WHERE status = 2;
-- The optional history limit purges every message created before a cutoff, whatever its status.
CREATE INDEX messages_purge_history  ON messages (created_at);

-- The change feed: one event per committed status change.
CREATE TABLE change_events (
    conversation_id text     NOT NULL,
    seq             bigint   NOT NULL CHECK (seq > 0),
    msg_id          bigint   NOT NULL,
    status          smallint NOT NULL CHECK (status IN (0, 1, 2)),
    version         bigint   NOT NULL CHECK (version >= 1),
    at              bigint   NOT NULL,
    by_user         text     NOT NULL,
    -- changes_since: `conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3` is a range scan.
    PRIMARY KEY (conversation_id, seq)
);
-- The purge deletes the events of the messages it removes.
CREATE INDEX change_events_by_message ON change_events (conversation_id, msg_id);

-- Request records: the first outcome of every transition request, for replay protection.
CREATE TABLE requests (
    conversation_id text     NOT NULL,
    request_id      text     NOT NULL,
    action          text     NOT NULL CHECK (action IN ('recall', 'restore', 'delete')),
    msg_id          bigint   NOT NULL,
    requester       text     NOT NULL,
    status          smallint NOT NULL CHECK (status IN (0, 1, 2)),
    version         bigint   NOT NULL CHECK (version >= 1),
    changed         boolean  NOT NULL,
    at              bigint   NOT NULL,
    -- A concurrent duplicate of the same request id loses on this key and replays the winner.
    PRIMARY KEY (conversation_id, request_id)
);
-- The purge drops records older than the retention cutoff.
CREATE INDEX requests_by_age ON requests (at);
