-- Scratch data for the README's EXPLAIN section. Run after creating schema imspg_explain and
-- applying migrations/0001_schema.sql in it (see the EXPLAIN section of ../README.md).
SET search_path = imspg_explain;
-- one conversation with 1,000,000 messages; 1% recalled, 0.5% deleted
INSERT INTO messages (conversation_id, msg_id, sender_id, msg_type, content, status, version, created_at, recalled_at, recalled_by, deleted_at, deleted_by)
SELECT 'big', g::bigint << 22, 'user-' || (g % 50), 1, '\x490100'::bytea || convert_to('message ' || g, 'UTF8'),
       CASE WHEN g % 100 = 0 THEN 1 WHEN g % 200 = 1 THEN 2 ELSE 0 END,
       CASE WHEN g % 100 = 0 OR g % 200 = 1 THEN 2 ELSE 1 END,
       1735689600000 + g,
       CASE WHEN g % 100 = 0 THEN 1735689600000 + g + 1000 END,
       CASE WHEN g % 100 = 0 THEN 'user-' || (g % 50) END,
       CASE WHEN g % 200 = 1 THEN 1735689600000 + g + 1000 END,
       CASE WHEN g % 200 = 1 THEN 'user-' || (g % 50) END
FROM generate_series(1, 1000000) g;
-- 1,000 other conversations with 1,000 messages each
INSERT INTO messages (conversation_id, msg_id, sender_id, msg_type, content, created_at)
SELECT 'group-' || c, (g::bigint << 22) + c, 'user-' || (g % 20), 1, '\x490100'::bytea || convert_to('hello ' || g, 'UTF8'), 1735689600000 + g
FROM generate_series(1, 1000) c, generate_series(1, 1000) g;
-- one small conversation of 1,000 messages
INSERT INTO messages (conversation_id, msg_id, sender_id, msg_type, content, created_at)
SELECT 'small', g::bigint << 22, 'user-1', 1, '\x490100'::bytea || convert_to('hi ' || g, 'UTF8'), 1735689600000 + g
FROM generate_series(1, 1000) g;
-- the big conversation's feed: one event per recalled/deleted message
INSERT INTO conversations (conversation_id, feed_seq) VALUES ('big', 15000), ('small', 0);
INSERT INTO change_events (conversation_id, seq, msg_id, status, version, at, by_user)
SELECT 'big', row_number() OVER (ORDER BY msg_id), msg_id, status, version, coalesce(recalled_at, deleted_at), 'user-1'
FROM messages WHERE conversation_id = 'big' AND status <> 0;
ANALYZE;
