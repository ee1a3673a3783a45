-- The purge batch as src/purge.rs runs it: step 1 locks the candidates, step 2 deletes them with
-- their events (and old request records) in one statement; in a transaction, rolled back.
SET search_path = imspg_explain;
BEGIN;
\echo '=== purge step 1: lock the candidates'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT m.conversation_id, m.status, m.version, m.created_at, m.recalled_at,
       m.recalled_by, m.restored_at, m.deleted_at, m.deleted_by, m.msg_id
FROM messages m
WHERE ((m.status = 1 AND m.recalled_at <= 1735689600000 + 300000)
    OR (m.status = 2 AND m.deleted_at <= 1735689600000 + 300000)
    OR m.created_at <= -9223372036854775808)
  AND NOT EXISTS (SELECT 1 FROM conversations c
                  WHERE c.conversation_id = m.conversation_id AND c.legal_hold)
LIMIT 500
FOR UPDATE OF m SKIP LOCKED;
CREATE TEMP TABLE doomed ON COMMIT DROP AS
SELECT m.conversation_id, m.msg_id FROM messages m
WHERE ((m.status = 1 AND m.recalled_at <= 1735689600000 + 300000)
    OR (m.status = 2 AND m.deleted_at <= 1735689600000 + 300000)
    OR m.created_at <= -9223372036854775808)
LIMIT 500;
\echo '=== purge step 2: delete the locked messages, their events, old request records'
PREPARE step2(text[], int8[], int8, int8) AS
WITH gone AS (
    DELETE FROM messages m USING UNNEST($1::text[], $2::int8[]) AS d(conv, id)
    WHERE m.conversation_id = d.conv AND m.msg_id = d.id
    RETURNING m.conversation_id, m.msg_id, m.attachment_key),
events AS (
    DELETE FROM change_events e USING UNNEST($1::text[], $2::int8[]) AS d(conv, id)
    WHERE e.conversation_id = d.conv AND e.msg_id = d.id
    RETURNING 1),
old AS MATERIALIZED (
    SELECT r.conversation_id, r.request_id FROM requests r
    WHERE r.at <= $3
      AND NOT EXISTS (SELECT 1 FROM conversations c
                      WHERE c.conversation_id = r.conversation_id AND c.legal_hold)
    LIMIT $4
    FOR UPDATE OF r SKIP LOCKED),
records AS (
    DELETE FROM requests r USING old o
    WHERE r.conversation_id = o.conversation_id AND r.request_id = o.request_id)
SELECT (SELECT count(*) FROM gone) AS messages,
       (SELECT count(*) FROM events) AS events,
       (SELECT coalesce(array_agg(attachment_key), '{}') FROM gone
        WHERE attachment_key IS NOT NULL) AS released;
SELECT array_agg(conversation_id) AS convs, array_agg(msg_id) AS ids FROM doomed \gset
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE step2(:'convs', :'ids', 1735689900000, 10000);
ROLLBACK;
