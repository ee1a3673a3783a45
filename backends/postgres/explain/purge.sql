SET search_path = imspg_explain;
BEGIN;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
WITH doomed AS MATERIALIZED (
    SELECT m.conversation_id, m.msg_id FROM messages m
    WHERE ((m.status = 1 AND m.recalled_at <= 1735689600000 + 300000)
        OR (m.status = 2 AND m.deleted_at <= 1735689600000 + 300000)
        OR m.created_at <= -9223372036854775808)
      AND NOT EXISTS (SELECT 1 FROM conversations c
                      WHERE c.conversation_id = m.conversation_id AND c.legal_hold)
    LIMIT 500
    FOR UPDATE OF m SKIP LOCKED),
gone AS (
    DELETE FROM messages m USING doomed d
    WHERE m.conversation_id = d.conversation_id AND m.msg_id = d.msg_id
    RETURNING m.conversation_id, m.msg_id, m.attachment_key),
events AS (
    DELETE FROM change_events e USING gone g
    WHERE e.conversation_id = g.conversation_id AND e.msg_id = g.msg_id
    RETURNING 1)
SELECT (SELECT count(*) FROM gone) AS messages,
       (SELECT count(*) FROM events) AS events,
       (SELECT coalesce(array_agg(attachment_key), '{}') FROM gone
        WHERE attachment_key IS NOT NULL) AS released;
ROLLBACK;
