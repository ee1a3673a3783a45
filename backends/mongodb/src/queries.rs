//! Every query shape the backend sends, built in one place.
//!
//! The modules that read and write build their filters, sorts and limits here, and
//! `examples/explain.rs` asks the server to `explain` the very same [`Query`] values, so the
//! plans printed in the README cannot drift from what the backend runs. Hidden from the docs:
//! not an API, only the backend's and its tools' shared source of truth.
//!
//! Writes (`update_one`, `update_many`, `delete_one`, `delete_many`) are listed by the query
//! that selects their documents: that is what an index serves or not (FerretDB v1 runs every
//! update or delete as that query, then a write per matching `_id`).

use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, Document, doc};

use futures::TryStreamExt;
use imstore_core::Result;
use mongodb::Collection;

use crate::doc::{kind, todo};
use crate::error::{NOT_IMPLEMENTED, code_of, map};
use crate::handle::MongoBackend;
use crate::schema::{HOLDS, LOG, MESSAGES};

/// One query as the backend sends it: collection, filter, sort, limit, projection.
#[derive(Debug, Clone)]
pub struct Query {
    /// The collection queried.
    pub collection: &'static str,
    /// The filter (for a write: the filter selecting the documents it changes).
    pub filter: Document,
    /// The sort, when the query has one.
    pub sort: Option<Document>,
    /// The limit, when the query has one (`1` for `find_one`, `update_one`, `delete_one`).
    pub limit: Option<i64>,
    /// The projection, when the query has one.
    pub projection: Option<Document>,
}

impl Query {
    fn new(collection: &'static str, filter: Document) -> Self {
        Query {
            collection,
            filter,
            sort: None,
            limit: None,
            projection: None,
        }
    }

    fn sort(mut self, sort: Document) -> Self {
        self.sort = Some(sort);
        self
    }

    fn limit(mut self, limit: i64) -> Self {
        self.limit = Some(limit);
        self
    }

    fn projection(mut self, projection: Document) -> Self {
        self.projection = Some(projection);
        self
    }

    /// The `find` command this query is, for `{explain: ..., verbosity: "queryPlanner"}`.
    pub fn find_command(&self) -> Document {
        let mut cmd = doc! {"find": self.collection, "filter": self.filter.clone()};
        if let Some(s) = &self.sort {
            cmd.insert("sort", s.clone());
        }
        if let Some(l) = self.limit {
            cmd.insert("limit", l);
        }
        if let Some(p) = &self.projection {
            cmd.insert("projection", p.clone());
        }
        cmd
    }
}

/// Direction of a page: `true` newest first.
fn page_op(newest_first: bool) -> (&'static str, i32) {
    if newest_first {
        ("$lt", -1)
    } else {
        ("$gt", 1)
    }
}

/// messages: one message by its key (point read; also the re-key compare-and-set, with
/// `content` added to the filter). Index `conversation_msg_id`.
pub fn message_by_key(conversation: &str, msg_id: i64) -> Query {
    Query::new(
        MESSAGES,
        doc! {"conversation_id": conversation, "msg_id": msg_id},
    )
    .limit(1)
}

/// messages: a page of `limit` messages after `cursor` (none: from the end). Index
/// `conversation_msg_id`, walked forward (newest first) or backward.
pub fn page(conversation: &str, cursor: Option<i64>, newest_first: bool, limit: i64) -> Query {
    let (op, order) = page_op(newest_first);
    let mut filter = doc! {"conversation_id": conversation};
    if let Some(c) = cursor {
        filter.insert("msg_id", doc! {op: c});
    }
    Query::new(MESSAGES, filter)
        .sort(doc! {"msg_id": order})
        .limit(limit)
}

/// messages: one message document by `_id` (the lifecycle cache write, filtered on an older
/// version; the purge's delete without the version). Index `_id_`.
pub fn message_by_id(msg: ObjectId, older_than: Option<i64>) -> Query {
    let mut filter = doc! {"_id": msg};
    if let Some(v) = older_than {
        filter.insert("version", doc! {"$lt": v});
    }
    Query::new(MESSAGES, filter).limit(1)
}

/// messages: purge candidates not parked under a legal hold: retired before the retention
/// cutoff, or (with a history limit) created before the history cutoff. Each `$or` branch on
/// its index, `parked_retired_at` / `parked_created_at` (`parked: null` is the index's first
/// key, so a held conversation's parked backlog is never walked).
pub fn purge_candidates(retention_cutoff: i64, history_cutoff: Option<i64>, limit: i64) -> Query {
    let mut expired = vec![doc! {"parked": Bson::Null, "retired_at": {"$lte": retention_cutoff}}];
    if let Some(h) = history_cutoff {
        expired.push(doc! {"parked": Bson::Null, "created_at": {"$lte": h}});
    }
    Query::new(MESSAGES, doc! {"$or": expired})
        .projection(doc! {"content": 0})
        .limit(limit)
}

/// messages: the documents parked under the hold of `conversation` (un-parked when the hold is
/// released). Index `parked_retired_at` (its prefix).
pub fn parked(conversation: &str) -> Query {
    Query::new(MESSAGES, doc! {"parked": conversation})
}

/// messages: the given documents (parked at once, or un-parked again). Index `_id_`.
pub fn messages_by_ids(ids: &[ObjectId]) -> Query {
    let ids: Vec<Bson> = ids.iter().map(|i| Bson::ObjectId(*i)).collect();
    Query::new(MESSAGES, doc! {"_id": {"$in": ids}})
}

/// messages: is an attachment key still referenced by a stored message? Index `attachment_key`.
pub fn attachment_referenced(key: &str) -> Query {
    Query::new(MESSAGES, doc! {"attachment.key": key})
        .projection(doc! {"_id": 1})
        .limit(1)
}

/// messages: the re-key scan, `limit` contents after `_id` `after`. Index `_id_`.
pub fn content_scan(after: Option<ObjectId>, limit: i64) -> Query {
    let mut filter = Document::new();
    if let Some(last) = after {
        filter.insert("_id", doc! {"$gt": last});
    }
    Query::new(MESSAGES, filter)
        .sort(doc! {"_id": 1})
        .limit(limit)
        .projection(doc! {"conversation_id": 1, "msg_id": 1, "content": 1})
}

/// log: the commits after each `(message, version)` given (every read of a message). Index
/// `msg_version`, one `$or` branch per message.
pub fn commits_after(rows: &[(ObjectId, i64)]) -> Query {
    let mut branches: Vec<Document> = rows
        .iter()
        .map(|(msg, v)| doc! {"msg": msg, "version": {"$gt": v}})
        .collect();
    let filter = if branches.len() == 1 {
        branches.remove(0)
    } else {
        doc! {"$or": branches}
    };
    Query::new(LOG, filter).projection(doc! {"msg": 1, "version": 1, "kind": 1, "next": 1})
}

/// log: the entry holding a request id (a transition's replay lookup). Index
/// `conversation_request`.
pub fn request_record(conversation: &str, request_id: &str) -> Query {
    Query::new(
        LOG,
        doc! {"conversation_id": conversation, "request_id": request_id},
    )
    .projection(doc! {"conversation_id": 1, "request_id": 1, "msg_id": 1, "at": 1, "record": 1})
    .limit(1)
}

/// Which entries [`highest`] looks at.
#[derive(Debug, Clone)]
pub enum Highest {
    /// Every entry holding a position: the next position is this plus one. Index
    /// `conversation_seq`, walked backward.
    Position,
    /// Events and former events: the feed head. Index `conversation_kind_seq`.
    Head,
    /// Former events: the purge mark. Index `conversation_kind_seq`.
    Gone,
    /// Events of these messages (purged, not finished): the purge mark. Index
    /// `conversation_kind_seq`.
    EventsOf(Vec<ObjectId>),
}

/// log: the highest seq of a conversation's entries of one sort. Positions are Int64; the
/// `$gt: 0` keeps request records (whose position slot holds an ObjectId, which sorts above
/// every number) out of it.
pub fn highest(conversation: &str, which: Highest) -> Query {
    let mut filter = doc! {"conversation_id": conversation, "seq": {"$gt": 0_i64}};
    match which {
        Highest::Position => {}
        Highest::Head => {
            filter.insert("kind", doc! {"$in": [kind::EVENT, kind::GONE]});
        }
        Highest::Gone => {
            filter.insert("kind", kind::GONE);
        }
        Highest::EventsOf(msgs) => {
            let msgs: Vec<Bson> = msgs.into_iter().map(Bson::ObjectId).collect();
            filter.insert("kind", kind::EVENT);
            filter.insert("msg", doc! {"$in": msgs});
        }
    }
    Query::new(LOG, filter)
        .sort(doc! {"seq": -1})
        .projection(doc! {"seq": 1})
        .limit(1)
}

/// log: up to `limit` events after `after`, in seq order (the feed pull). Index
/// `conversation_kind_seq`.
pub fn feed_pull(conversation: &str, after: i64, limit: i64) -> Query {
    Query::new(
        LOG,
        doc! {"conversation_id": conversation, "kind": kind::EVENT, "seq": {"$gt": after}},
    )
    .sort(doc! {"seq": 1})
    .limit(limit)
}

/// log: the unfinished purges of a conversation (read before a feed pull or head). Index
/// `todo_conversation`.
pub fn purging(conversation: &str) -> Query {
    Query::new(
        LOG,
        doc! {"todo": todo::FINISH, "conversation_id": conversation},
    )
    .projection(doc! {"msg": 1})
}

/// log: the unfinished purges of many conversations at once (the batch head read by device
/// sync). Index `todo_conversation`, one range per conversation.
pub fn purging_in(conversations: &[&str]) -> Query {
    Query::new(
        LOG,
        doc! {"todo": todo::FINISH, "conversation_id": {"$in": conversations}},
    )
    .projection(doc! {"conversation_id": 1, "msg": 1})
}

/// log: one entry by `_id` (clearing its `todo`). Index `_id_`.
pub fn entry_by_id(entry: ObjectId) -> Query {
    Query::new(LOG, doc! {"_id": entry}).limit(1)
}

/// log: the events of a purged message (turned `gone`). Index `msg_version` (its prefix).
pub fn events_of(msg: ObjectId) -> Query {
    Query::new(LOG, doc! {"msg": msg, "kind": kind::EVENT})
}

/// log: request records past retention (deleted). Index `kind_at`.
pub fn expired_records(cutoff: i64) -> Query {
    Query::new(LOG, doc! {"kind": kind::RECORD, "at": {"$lte": cutoff}})
}

/// log: up to `limit` entries with an unfinished follow-up (`todo::FINISH`: purges,
/// `todo::CACHE`: documents behind their log). Index `todo_conversation` (its prefix).
pub fn unfinished(mark: &str, limit: i64) -> Query {
    let q = Query::new(LOG, doc! {"todo": mark}).limit(limit);
    if mark == todo::CACHE {
        q.projection(doc! {"msg": 1, "next": 1})
    } else {
        q
    }
}

/// log: up to `limit` entries that only guard a feed position and are older than `old` (wall
/// clock): finished purges and fences, and former events past retention. Indexes `kind_wall`
/// (first branch, one range per kind) and `kind_wall` or `kind_at` (second).
pub fn sweepable(old: i64, cutoff: i64, limit: i64) -> Query {
    Query::new(
        LOG,
        doc! {"$or": [
            {
                "kind": {"$in": [kind::PURGE, kind::FENCE]},
                "wall": {"$lt": old},
                "todo": {"$exists": false},
            },
            {"kind": kind::GONE, "at": {"$lte": cutoff}, "wall": {"$lt": old}},
        ]},
    )
    .projection(doc! {"conversation_id": 1, "kind": 1})
    .limit(limit)
}

/// log: the given entries, those below position `below` (the sweep's delete). Index `_id_`.
pub fn entries_below(ids: &[ObjectId], below: i64) -> Query {
    let ids: Vec<Bson> = ids.iter().map(|i| Bson::ObjectId(*i)).collect();
    Query::new(LOG, doc! {"_id": {"$in": ids}, "seq": {"$lt": below}})
}

/// log: the given entries, those at or above position `from` (kept by the sweep, their `wall`
/// moved on). Index `_id_`.
pub fn entries_from(ids: &[ObjectId], from: i64) -> Query {
    let ids: Vec<Bson> = ids.iter().map(|i| Bson::ObjectId(*i)).collect();
    Query::new(LOG, doc! {"_id": {"$in": ids}, "seq": {"$gte": from}})
}

/// legal_holds: is a conversation held? Index `_id_`.
pub fn hold(conversation: &str) -> Query {
    Query::new(HOLDS, doc! {"_id": conversation, "held": true}).limit(1)
}

/// legal_holds: a conversation's hold document (set or cleared, upserted). Index `_id_`.
pub fn hold_document(conversation: &str) -> Query {
    Query::new(HOLDS, doc! {"_id": conversation}).limit(1)
}

/// One aggregation as the backend sends it: collection and stages.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The collection aggregated.
    pub collection: &'static str,
    /// The stages, in order.
    pub stages: Vec<Document>,
}

impl Pipeline {
    /// The `aggregate` command this pipeline is, for `{explain: ..., verbosity: "queryPlanner"}`.
    pub fn aggregate_command(&self) -> Document {
        doc! {"aggregate": self.collection, "pipeline": self.stages.clone(), "cursor": {}}
    }
}

/// log: for each of `conversations`, the highest seq of its entries of kind `of` (`event` or
/// `gone`), as `{_id: conversation, seq}`; a conversation without one is absent. Index
/// `conversation_kind_seq`, walked backward: the sort is the index's reversed, the match is
/// its bounds (each conversation, one kind), and a `$group` keyed on the index's first field
/// taking `$first` of the sort is the shape MongoDB answers with a `DISTINCT_SCAN`, one index
/// seek per conversation, whatever the histories hold.
pub fn highest_of_kind_in(conversations: &[&str], of: &str) -> Pipeline {
    Pipeline {
        collection: LOG,
        stages: vec![
            doc! {"$match": {"conversation_id": {"$in": conversations}, "kind": of}},
            doc! {"$sort": {"conversation_id": -1, "kind": -1, "seq": -1}},
            doc! {"$group": {"_id": "$conversation_id", "seq": {"$first": "$seq"}}},
        ],
    }
}

/// log: for each conversation, the highest seq among the events of the messages `msgs` (whose
/// purge is committed, not finished), as `{_id: conversation, seq}`. Index `msg_version`: the
/// events of a few messages, grouped (their count is bounded by the unfinished purges, not by
/// any history).
pub fn highest_events_of(msgs: &[ObjectId]) -> Pipeline {
    let msgs: Vec<Bson> = msgs.iter().map(|m| Bson::ObjectId(*m)).collect();
    Pipeline {
        collection: LOG,
        stages: vec![
            doc! {"$match": {"msg": {"$in": msgs}, "kind": kind::EVENT}},
            doc! {"$group": {"_id": "$conversation_id", "seq": {"$max": "$seq"}}},
        ],
    }
}

/// The collection a query runs on.
pub(crate) fn collection<'a>(b: &'a MongoBackend, q: &Query) -> &'a Collection<Document> {
    named(b, q.collection)
}

/// The collection called `name`.
fn named<'a>(b: &'a MongoBackend, name: &str) -> &'a Collection<Document> {
    match name {
        MESSAGES => &b.messages,
        LOG => &b.log,
        _ => &b.holds,
    }
}

/// Runs `q` as a `find` and collects every document it returns.
pub(crate) async fn find(b: &MongoBackend, q: Query) -> Result<Vec<Document>> {
    let mut find = collection(b, &q).find(q.filter);
    if let Some(s) = q.sort {
        find = find.sort(s);
    }
    if let Some(l) = q.limit {
        find = find.limit(l);
    }
    if let Some(p) = q.projection {
        find = find.projection(p);
    }
    find.await.map_err(map)?.try_collect().await.map_err(map)
}

/// Runs `q` as a `find_one` (its limit is 1 anyway).
pub(crate) async fn find_one(b: &MongoBackend, q: Query) -> Result<Option<Document>> {
    let mut find = collection(b, &q).find_one(q.filter);
    if let Some(s) = q.sort {
        find = find.sort(s);
    }
    if let Some(p) = q.projection {
        find = find.projection(p);
    }
    find.await.map_err(map)
}

/// Runs `p` as an `aggregate` and collects every document it returns; `None` when the server
/// does not implement one of its stages or operators.
pub(crate) async fn aggregate(b: &MongoBackend, p: Pipeline) -> Result<Option<Vec<Document>>> {
    let run = async {
        named(b, p.collection)
            .aggregate(p.stages)
            .await?
            .try_collect()
            .await
    };
    match run.await {
        Ok(docs) => Ok(Some(docs)),
        Err(e) if code_of(&e) == Some(NOT_IMPLEMENTED) => Ok(None),
        Err(e) => Err(map(e)),
    }
}
