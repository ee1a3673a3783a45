SET search_path = imspg_explain;
\echo '=== latest page, big conversation (1,000,000 rows), prepared as the store runs it'
PREPARE latest(text, int8) AS SELECT msg_id, sender_id, msg_type, content, attachment_key, attachment_size, attachment_mime, status, version, created_at, recalled_at, recalled_by, restored_at, deleted_at, deleted_by FROM messages WHERE conversation_id = $1 ORDER BY msg_id DESC LIMIT $2;
EXPLAIN (ANALYZE, BUFFERS) EXECUTE latest('big', 51);
\echo '=== latest page, small conversation (1,000 rows)'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE latest('small', 51);
\echo '=== older page with a cursor, big conversation'
PREPARE older(text, int8, int8) AS SELECT msg_id, sender_id, msg_type, content, attachment_key, attachment_size, attachment_mime, status, version, created_at, recalled_at, recalled_by, restored_at, deleted_at, deleted_by FROM messages WHERE conversation_id = $1 AND msg_id < $2 ORDER BY msg_id DESC LIMIT $3;
EXPLAIN (ANALYZE, BUFFERS) EXECUTE older('big', 500000::int8 << 22, 51);
\echo '=== oldest-first page with a cursor, big conversation'
PREPARE newer(text, int8, int8) AS SELECT msg_id, sender_id, msg_type, content, attachment_key, attachment_size, attachment_mime, status, version, created_at, recalled_at, recalled_by, restored_at, deleted_at, deleted_by FROM messages WHERE conversation_id = $1 AND msg_id > $2 ORDER BY msg_id ASC LIMIT $3;
EXPLAIN (ANALYZE, BUFFERS) EXECUTE newer('big', 500000::int8 << 22, 51);
\echo '=== point read, big conversation'
PREPARE point(text, int8) AS SELECT msg_id, sender_id, msg_type, content, attachment_key, attachment_size, attachment_mime, status, version, created_at, recalled_at, recalled_by, restored_at, deleted_at, deleted_by FROM messages WHERE conversation_id = $1 AND msg_id = $2;
EXPLAIN (ANALYZE, BUFFERS) EXECUTE point('big', 777777::int8 << 22);
\echo '=== point read, small conversation'
EXPLAIN (ANALYZE, BUFFERS) EXECUTE point('small', 777::int8 << 22);
\echo '=== generic plans (what a cached prepared statement may switch to)'
SET plan_cache_mode = force_generic_plan;
EXPLAIN EXECUTE latest('big', 51);
EXPLAIN EXECUTE older('big', 500000::int8 << 22, 51);
EXPLAIN EXECUTE point('big', 777777::int8 << 22);
RESET plan_cache_mode;
\echo '=== changes_since, big conversation (15,000 events)'
PREPARE changes(text, int8, int8) AS SELECT seq, msg_id, status, version, at, by_user FROM change_events WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3;
EXPLAIN (ANALYZE, BUFFERS) EXECUTE changes('big', 7000, 100);
\echo '=== purge candidates (read-only part of the purge statement), retention cutoff before most recalls, no history limit'
EXPLAIN (ANALYZE, BUFFERS)
SELECT m.conversation_id, m.msg_id FROM messages m
WHERE ((m.status = 1 AND m.recalled_at <= 1735689600000 + 300000) OR (m.status = 2 AND m.deleted_at <= 1735689600000 + 300000) OR m.created_at <= -9223372036854775808)
  AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.conversation_id = m.conversation_id AND c.legal_hold)
LIMIT 500 FOR UPDATE OF m SKIP LOCKED;
