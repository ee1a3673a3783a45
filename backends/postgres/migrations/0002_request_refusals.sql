-- imstore PostgreSQL schema, version 2: refusals are first outcomes too.
--
-- Every decided outcome of a transition request is recorded, refusals included (NotFound,
-- Forbidden, WindowExpired, InvalidState, StaleRequest), so that a captured request replayed
-- later can never have another effect. A refused record keeps the error kind (the core's
-- `ErrorKind::as_str`, checked when read back rather than listed here, so that a kind core adds
-- later needs no migration) and the state the request was judged against: version 0 when the
-- message did not exist.
ALTER TABLE requests ADD COLUMN refusal text;
ALTER TABLE requests DROP CONSTRAINT requests_version_check;
ALTER TABLE requests ADD CONSTRAINT requests_version_check CHECK (version >= 0);
-- A refusal never changed the message.
ALTER TABLE requests ADD CONSTRAINT requests_refusal_unchanged
    CHECK (refusal IS NULL OR NOT changed);
