-- The round-2 queries (heads, the re-key scan, the attachment counts) on scratch data: 10,000
-- conversations of 20 messages (200,000 rows), a feed row per conversation, a shared attachment
-- key per 10 messages. Run in a schema with every migration applied (see ../README.md).
SET search_path = imspg_explain2;
INSERT INTO messages (conversation_id, msg_id, sender_id, msg_type, content, attachment_key,
                      attachment_size, attachment_mime, created_at)
SELECT 'conv-' || c, (g::bigint << 22) + c, 'user-' || (g % 7), 1,
       '\x490100'::bytea || convert_to('hello ' || g, 'UTF8'),
       CASE WHEN g % 2 = 0 THEN 'blobs/' || ((c * 20 + g) / 10) END,
       CASE WHEN g % 2 = 0 THEN 1000 END, CASE WHEN g % 2 = 0 THEN 'image/png' END,
       1735689600000 + g
FROM generate_series(1, 10000) c, generate_series(1, 20) g;
INSERT INTO attachments (attachment_key, refs)
SELECT attachment_key, count(*) FROM messages WHERE attachment_key IS NOT NULL GROUP BY 1;
INSERT INTO conversations (conversation_id, feed_seq, purged_through)
SELECT 'conv-' || c, 20, 5 FROM generate_series(1, 10000) c;
ANALYZE;

PREPARE heads(text[]) AS
  SELECT k.ord, COALESCE(c.feed_seq, 0) AS head, COALESCE(c.purged_through, 0) AS purged
  FROM UNNEST($1::text[]) WITH ORDINALITY AS k (conversation_id, ord)
  LEFT JOIN LATERAL (SELECT feed_seq, purged_through FROM conversations
                     WHERE conversation_id = k.conversation_id LIMIT 1) c ON true
  ORDER BY k.ord;
-- The plain join, for comparison: the planner may hash the whole table.
PREPARE heads_join(text[]) AS
  SELECT k.ord, COALESCE(c.feed_seq, 0) AS head, COALESCE(c.purged_through, 0) AS purged
  FROM UNNEST($1::text[]) WITH ORDINALITY AS k (conversation_id, ord)
  LEFT JOIN conversations c ON c.conversation_id = k.conversation_id ORDER BY k.ord;
PREPARE scan_first(bigint) AS
  SELECT conversation_id, msg_id, content FROM messages ORDER BY conversation_id, msg_id LIMIT $1;
PREPARE scan_after(text, bigint, bigint) AS
  SELECT conversation_id, msg_id, content FROM messages
  WHERE (conversation_id, msg_id) > ($1, $2) ORDER BY conversation_id, msg_id LIMIT $3;
PREPARE lock_keys(text[]) AS
  SELECT attachment_key FROM attachments WHERE attachment_key = ANY($1)
  ORDER BY attachment_key FOR UPDATE;

\echo === heads of 1,000 conversations (every third one never written)
SELECT array_agg(CASE WHEN g % 3 = 0 THEN 'nobody-' ELSE 'conv-' END || g)::text AS ids
  FROM generate_series(1, 1000) g \gset
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE heads(:'ids');
\echo === the same with a plain join
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE heads_join(:'ids');
\echo === re-key scan, first page of 500
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE scan_first(501);
\echo === re-key scan, a page of 500 from the middle
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE scan_after('conv-5000', 41943040, 501);
\echo === purge: lock the reference counts of 50 keys
BEGIN;
SELECT array_agg('blobs/' || g)::text AS keys FROM generate_series(1000, 1049) g \gset
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE lock_keys(:'keys');
ROLLBACK;
