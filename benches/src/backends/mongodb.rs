//! MongoDB / FerretDB: imstore-mongodb in a fresh database, against the mongodb driver with the
//! minimal command on the same `messages` collection (same unique key `{conversation_id, msg_id}`)
//! and on a minimal `bench_events` collection keyed `{conversation_id, seq}` for the feed.
//!
//! Every database is made by the backend's shipped test factory (`imstore_mongodb::testing`),
//! named `bench_mongo_<unix seconds>_...` so that its sweeper can tell a crashed run's leftovers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::TryStreamExt;
use imstore_conformance::StoreFactory;
use imstore_core::{NewMessage, StoreSettings};
use imstore_mongodb::testing::MongoFactory;
use imstore_mongodb::{MongoBackend, MongoStore};
use mongodb::bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;
use mongodb::options::{ClientOptions, CollectionOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};

use crate::harness::R;
use crate::now_ms;
use crate::target::{Fair, Handle, Raw, SyncStores, Target};

/// Write statements issued by isolated clients, per "command.collection".
type DriverCounts = Arc<Mutex<BTreeMap<String, u64>>>;

/// The MongoDB target over database `db`.
pub struct MongoTarget {
    url: String,
    factory: MongoFactory,
    db_name: String,
    counting_db: String,
    /// The device-sync path's database (FerretDB v1 reads cost the collection's size).
    sync_db: String,
    version: String,
    client: Client,
    raw: Arc<MongoRaw>,
    fair: Arc<MongoFair>,
    /// True when serverStatus opcounters move with writes (MongoDB); FerretDB v1 may not.
    server_counters: bool,
    driver_counts: DriverCounts,
}

fn binary(bytes: &[u8]) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    })
}

async fn opcounters(db: &Database) -> R<Option<BTreeMap<String, u64>>> {
    let status = db.run_command(doc! {"serverStatus": 1}).await?;
    let Ok(ops) = status.get_document("opcounters") else {
        return Ok(None);
    };
    let mut out = BTreeMap::new();
    for k in ["insert", "update", "delete"] {
        let v = match ops.get(k) {
            Some(Bson::Int32(n)) => *n as u64,
            Some(Bson::Int64(n)) => *n as u64,
            Some(Bson::Double(n)) => *n as u64,
            _ => return Ok(None),
        };
        out.insert(format!("opcounters.{k}"), v);
    }
    Ok(Some(out))
}

/// The factory every bench database comes from.
fn factory(url: &str) -> MongoFactory {
    MongoFactory::new(url).with_prefix("bench_mongo")
}

impl MongoTarget {
    /// Connects imstore (which builds its indexes) and the baseline to a fresh database from the
    /// backend's factory (which names it; `_suggested` is the generic bench name, unused).
    pub async fn connect(url: &str, _suggested: String) -> R<Self> {
        let factory = factory(url);
        let db_name = factory.create_namespace().await;
        // The isolated stores that count a recall's writes get a database of their own.
        let counting_db = factory.create_namespace().await;
        let sync_db = factory.create_namespace().await;
        let client = factory.client().await.clone();
        let admin = client.database("admin");
        let info = admin.run_command(doc! {"buildInfo": 1}).await?;
        let mut version = info.get_str("version").unwrap_or("?").to_owned();
        if let Ok(f) = info.get_str("ferretdbVersion") {
            version = format!("{version} (FerretDB {f})");
        }
        // Opening a backend once builds the collections' indexes before anything is loaded.
        factory.backend(&db_name).await;
        let db = client.database(&db_name);
        let wc = CollectionOptions::builder()
            .write_concern(WriteConcern::majority())
            .build();
        let events = db.collection_with_options::<Document>("bench_events", wc.clone());
        events
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"conversation_id": 1, "seq": 1})
                    .options(
                        IndexOptions::builder()
                            .unique(true)
                            .name("conversation_seq".to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await?;
        // Do the server's opcounters see a write? (FerretDB v1 may report none or zeros.)
        let probe = db.collection::<Document>("bench_probe");
        let before = opcounters(&admin).await.ok().flatten();
        probe.insert_one(doc! {"x": 1}).await?;
        let after = opcounters(&admin).await.ok().flatten();
        let server_counters = match (before, after) {
            (Some(b), Some(a)) => a["opcounters.insert"] > b["opcounters.insert"],
            _ => false,
        };
        probe.drop().await?;
        // The fair side with the concerns imstore's collections have.
        let config = factory.config(&db_name);
        let concerns = CollectionOptions::builder()
            .write_concern(config.write_concern().clone())
            .read_concern(config.read_concern().cloned())
            .build();
        let fair = Arc::new(MongoFair {
            messages: db.collection_with_options("messages", concerns.clone()),
            log: db.collection_with_options("log", concerns),
        });
        Ok(MongoTarget {
            url: url.to_owned(),
            factory,
            db_name,
            counting_db,
            sync_db,
            version,
            raw: Arc::new(MongoRaw {
                messages: db.collection_with_options("messages", wc.clone()),
                events,
            }),
            fair,
            client,
            server_counters,
            driver_counts: Arc::default(),
        })
    }
}

#[async_trait]
impl Target for MongoTarget {
    fn name(&self) -> &'static str {
        "mongodb"
    }
    fn namespace(&self) -> String {
        format!("database {}", self.db_name)
    }
    fn server_version(&self) -> Option<String> {
        Some(self.version.clone())
    }
    async fn open(&self, settings: StoreSettings) -> R<Handle> {
        let store = self.factory.open(&self.db_name, settings).await;
        Ok(Handle {
            store: Arc::new(store),
            close: None,
        })
    }
    async fn open_isolated(&self, settings: StoreSettings) -> R<Handle> {
        let mut options = ClientOptions::parse(&self.url).await?;
        let counts = self.driver_counts.clone();
        // Every write command the backend sends, counted by statement (documents inserted,
        // update and delete statements), per collection.
        options.command_event_handler = Some(EventHandler::callback(move |ev: CommandEvent| {
            if let CommandEvent::Started(s) = ev {
                let (n, coll) = match s.command_name.as_str() {
                    "insert" => (
                        s.command
                            .get_array("documents")
                            .map(|a| a.len())
                            .unwrap_or(1),
                        s.command.get_str("insert").unwrap_or("?").to_owned(),
                    ),
                    "update" => (
                        s.command.get_array("updates").map(|a| a.len()).unwrap_or(1),
                        s.command.get_str("update").unwrap_or("?").to_owned(),
                    ),
                    "delete" => (
                        s.command.get_array("deletes").map(|a| a.len()).unwrap_or(1),
                        s.command.get_str("delete").unwrap_or("?").to_owned(),
                    ),
                    "findAndModify" => (
                        1,
                        s.command.get_str("findAndModify").unwrap_or("?").to_owned(),
                    ),
                    _ => return,
                };
                if let Ok(mut m) = counts.lock() {
                    *m.entry(format!("{}.{coll}", s.command_name)).or_default() += n as u64;
                }
            }
        }));
        let client = Client::with_options(options)?;
        // A database of its own: FerretDB v1 reads by scanning the collection, and by the time
        // writes are counted the send paths have added thousands of messages to the shared one.
        // Writes per recall do not depend on the other conversations, on MongoDB or FerretDB.
        let config = self.factory.config(&self.counting_db);
        let backend = MongoBackend::with_client(client.clone(), config).await?;
        let store = MongoStore::with_backend(backend, settings)?;
        Ok(Handle {
            store: Arc::new(store),
            close: Some(Box::pin(async move { client.shutdown().await })),
        })
    }
    async fn open_sync(&self, settings: StoreSettings) -> R<SyncStores> {
        let timed = Arc::new(self.factory.open(&self.sync_db, settings.clone()).await);
        let mut options = ClientOptions::parse(&self.url).await?;
        let requests = Arc::new(AtomicU64::new(0));
        let seen = requests.clone();
        // Every command the client sends is one request answered by one reply (a cursor's
        // getMore included); monitoring heartbeats are not commands.
        options.command_event_handler = Some(EventHandler::callback(move |ev: CommandEvent| {
            if let CommandEvent::Started(s) = ev
                && s.command_name != "endSessions"
            {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }));
        let client = Client::with_options(options)?;
        let backend = MongoBackend::with_client(client, self.factory.config(&self.sync_db)).await?;
        let counted = Arc::new(MongoStore::with_backend(backend, settings)?);
        Ok(SyncStores {
            timed,
            counted,
            requests: Some(Arc::new(move || requests.load(Ordering::Relaxed))),
            method: "driver: commands the client sent (command monitoring), each one request \
                     and one reply"
                .into(),
        })
    }
    fn raw(&self) -> Arc<dyn Raw> {
        self.raw.clone()
    }
    fn fair(&self) -> Option<Arc<dyn Fair>> {
        Some(self.fair.clone())
    }
    fn write_method(&self) -> String {
        if self.server_counters {
            "server: serverStatus opcounters insert + update + delete deltas".into()
        } else {
            "driver: write statements (inserted documents, update and delete statements, \
             findAndModify) the backend sent, seen by command monitoring on its client; \
             this server's serverStatus opcounters did not move with a write"
                .into()
        }
    }
    async fn write_counters(&self) -> R<Option<BTreeMap<String, u64>>> {
        if self.server_counters {
            opcounters(&self.client.database("admin")).await
        } else {
            Ok(Some(
                self.driver_counts.lock().map_err(|_| "poisoned")?.clone(),
            ))
        }
    }
    async fn drop_namespace(&self) -> R<()> {
        self.factory.drop_namespace(&self.db_name).await;
        self.factory.drop_namespace(&self.counting_db).await;
        self.factory.drop_namespace(&self.sync_db).await;
        Ok(())
    }
}

/// The driver on the same database: `messages` as imstore lays it out, `bench_events` minimal.
pub struct MongoRaw {
    messages: Collection<Document>,
    events: Collection<Document>,
}

fn message_doc(m: &NewMessage) -> Document {
    doc! {
        "conversation_id": m.conversation_id.as_str(),
        "msg_id": m.msg_id.as_i64(),
        "sender_id": m.sender_id.as_str(),
        "msg_type": m.msg_type.code(),
        "content": binary(&m.content),
        "status": 0,
        "version": 1_i64,
        "created_at": now_ms(),
    }
}

#[async_trait]
impl Raw for MongoRaw {
    async fn send(&self, m: &NewMessage) -> R<()> {
        self.messages.insert_one(message_doc(m)).await?;
        Ok(())
    }
    async fn send_batch(&self, ms: &[NewMessage]) -> R<()> {
        self.messages
            .insert_many(ms.iter().map(message_doc))
            .await?;
        Ok(())
    }
    async fn get(&self, conv: &str, id: i64) -> R<()> {
        let d = self
            .messages
            .find_one(doc! {"conversation_id": conv, "msg_id": id})
            .projection(doc! {"content": 1, "_id": 0})
            .await?
            .ok_or("baseline: message not found")?;
        std::hint::black_box(d);
        Ok(())
    }
    async fn latest(&self, conv: &str, limit: u32) -> R<usize> {
        let rows: Vec<Document> = self
            .messages
            .find(doc! {"conversation_id": conv})
            .sort(doc! {"msg_id": -1})
            .limit(limit as i64)
            .projection(doc! {"msg_id": 1, "sender_id": 1, "status": 1, "content": 1, "_id": 0})
            .await?
            .try_collect()
            .await?;
        Ok(rows.len())
    }
    async fn recall(&self, conv: &str, id: i64, by: &str, at: i64) -> R<()> {
        self.messages
            .update_one(
                doc! {"conversation_id": conv, "msg_id": id, "status": 0},
                doc! {"$set": {"status": 1, "recalled_at": at, "recalled_by": by}, "$inc": {"version": 1_i64}},
            )
            .await?;
        Ok(())
    }
    async fn restore(&self, conv: &str, id: i64, at: i64) -> R<()> {
        self.messages
            .update_one(
                doc! {"conversation_id": conv, "msg_id": id, "status": 1},
                doc! {"$set": {"status": 0, "restored_at": at, "recalled_at": Bson::Null}, "$inc": {"version": 1_i64}},
            )
            .await?;
        Ok(())
    }
    async fn feed(&self, conv: &str, after: u64, limit: u32) -> R<usize> {
        let rows: Vec<Document> = self
            .events
            .find(doc! {"conversation_id": conv, "seq": {"$gt": after as i64}})
            .sort(doc! {"seq": 1})
            .limit(limit as i64)
            .await?
            .try_collect()
            .await?;
        Ok(rows.len())
    }
    async fn seed_feed(&self, conv: &str, n: u64) -> R<()> {
        let docs: Vec<Document> = (1..=n as i64)
            .map(|seq| {
                doc! {"conversation_id": conv, "seq": seq, "msg_id": seq, "status": 1, "version": 2_i64, "at": now_ms(), "by": "alice"}
            })
            .collect();
        for chunk in docs.chunks(1000) {
            self.events.insert_many(chunk.to_vec()).await?;
        }
        Ok(())
    }
}

/// Drops the `bench_mongo_*` databases interrupted runs left (older than the factory's
/// leftover age, so a concurrent run keeps its own); returns their names.
pub async fn drop_leftovers(url: &str) -> R<Vec<String>> {
    Ok(factory(url).sweep_leftovers().await)
}

/// The fair baseline: the mongodb driver on imstore's own `messages` and `log` collections
/// (same write and read concerns), each job written by hand with the guarantees of imstore's
/// path, in the fewest round trips in series this layout allows (see [`Fair::round_trips`] and
/// `benches/README.md`). Its documents are imstore's: imstore reads what it writes.
pub struct MongoFair {
    messages: Collection<Document>,
    log: Collection<Document>,
}

/// The server's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

fn duplicate(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    matches!(e.kind.as_ref(), ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY)
        || matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == DUPLICATE_KEY)
}

/// The batch indexes an unordered `insert_many` refused as duplicates; any other failure is an
/// error.
fn duplicates(e: mongodb::error::Error) -> R<Vec<usize>> {
    if let mongodb::error::ErrorKind::InsertMany(m) = e.kind.as_ref()
        && m.write_concern_error.is_none()
        && let Some(errors) = m.write_errors.as_deref()
        && errors.iter().all(|w| w.code == DUPLICATE_KEY)
    {
        return Ok(errors.iter().map(|w| w.index).collect());
    }
    Err(e.into())
}

fn int(d: &Document, f: &str) -> Option<i64> {
    match d.get(f) {
        Some(Bson::Int64(v)) => Some(*v),
        Some(Bson::Int32(v)) => Some(i64::from(*v)),
        _ => None,
    }
}

fn text<'a>(d: &'a Document, f: &str) -> Option<&'a str> {
    match d.get(f) {
        Some(Bson::String(s)) => Some(s),
        _ => None,
    }
}

/// What a fair read needs of a message document: its `_id` and the lifecycle it shows.
fn version_of(d: &Document) -> R<(mongodb::bson::oid::ObjectId, i64)> {
    Ok((
        d.get_object_id("_id")?,
        int(d, "version").ok_or("no version")?,
    ))
}

/// The lifecycle fields a message document (or a log entry's `next`) holds.
const LIFECYCLE: [&str; 9] = [
    "status",
    "version",
    "created_at",
    "recalled_at",
    "recalled_by",
    "restored_at",
    "deleted_at",
    "deleted_by",
    "retired_at",
];

/// A message as `viewer` sees it: the lifecycle of its latest commit (`next`, when its document
/// trails the log), content only when shown (normal, or the sender's own recalled message).
fn mongo_view(d: &Document, next: Option<&Document>, viewer: &str) -> R<()> {
    let life = next.unwrap_or(d);
    let sender = text(d, "sender_id").ok_or("no sender")?;
    let status = int(life, "status").ok_or("no status")?;
    let shown = status == 0 || (status == 1 && sender == viewer);
    let view = (
        int(d, "msg_id").ok_or("no msg_id")?,
        int(d, "msg_type"),
        int(life, "version"),
        int(life, "created_at"),
        int(life, "recalled_at"),
        text(life, "recalled_by"),
        int(life, "restored_at"),
        int(life, "deleted_at"),
        text(life, "deleted_by"),
        d.get_document("attachment").ok(),
        shown.then(|| d.get_binary_generic("content")).transpose()?,
    );
    std::hint::black_box((sender, view));
    Ok(())
}

/// How a message stands against its log after the commits a fair read found.
enum Latest<'a> {
    /// No commit after the document's version: it is current.
    Current,
    /// A later version committed: its lifecycle.
    Behind(&'a Document),
    /// Its purge committed: the message is gone.
    Purged,
}

impl MongoFair {
    /// The commits after each `(document, version)`, the newest per document: one query over
    /// the `{msg, version}` index, as every imstore read of a message asks.
    async fn commits_after(
        &self,
        rows: &[(mongodb::bson::oid::ObjectId, i64)],
    ) -> R<std::collections::HashMap<mongodb::bson::oid::ObjectId, (i64, Document)>> {
        let mut branches: Vec<Document> = rows
            .iter()
            .map(|(msg, v)| doc! {"msg": msg, "version": {"$gt": v}})
            .collect();
        let filter = match branches.len() {
            1 => branches.remove(0),
            _ => doc! {"$or": branches},
        };
        let entries: Vec<Document> = self
            .log
            .find(filter)
            .projection(doc! {"msg": 1, "version": 1, "kind": 1, "next": 1})
            .await?
            .try_collect()
            .await?;
        let mut latest = std::collections::HashMap::new();
        for e in entries {
            let (msg, v) = (e.get_object_id("msg")?, int(&e, "version").unwrap_or(0));
            if latest
                .get(&msg)
                .is_none_or(|(seen, _): &(i64, Document)| *seen < v)
            {
                latest.insert(msg, (v, e));
            }
        }
        Ok(latest)
    }

    fn latest_of<'a>(
        found: &'a std::collections::HashMap<mongodb::bson::oid::ObjectId, (i64, Document)>,
        id: &mongodb::bson::oid::ObjectId,
    ) -> R<Latest<'a>> {
        Ok(match found.get(id) {
            None => Latest::Current,
            Some((_, e)) if text(e, "kind") == Some("purge") => Latest::Purged,
            Some((_, e)) => Latest::Behind(e.get_document("next")?),
        })
    }

    /// One message document brought up to its log (2 round trips in series): the document,
    /// then the commits after its version. `None` when missing or purged.
    async fn committed(&self, conv: &str, id: i64, content: bool) -> R<Option<Document>> {
        let mut find = self
            .messages
            .find_one(doc! {"conversation_id": conv, "msg_id": id});
        if !content {
            find = find.projection(doc! {"content": 0});
        }
        let Some(mut d) = find.await? else {
            return Ok(None);
        };
        let found = self.commits_after(&[version_of(&d)?]).await?;
        match Self::latest_of(&found, &version_of(&d)?.0)? {
            Latest::Current => {}
            Latest::Purged => return Ok(None),
            Latest::Behind(next) => {
                for f in LIFECYCLE {
                    match next.get(f) {
                        Some(v) => d.insert(f, v.clone()),
                        None => d.remove(f),
                    };
                }
            }
        }
        Ok(Some(d))
    }

    /// A stored copy under `m`'s key: the same sender, type and content is a retry (`true`),
    /// anything else a conflict (an error); `false` when it is gone (purged meanwhile).
    async fn judge(&self, m: &NewMessage) -> R<bool> {
        let Some(d) = self
            .committed(m.conversation_id.as_str(), m.msg_id.as_i64(), true)
            .await?
        else {
            return Ok(false);
        };
        let same = text(&d, "sender_id") == Some(m.sender_id.as_str())
            && int(&d, "msg_type") == Some(i64::from(m.msg_type.code()))
            && d.get_binary_generic("content")?.as_slice() == m.content.as_slice();
        if same {
            Ok(true)
        } else {
            Err(format!("conflict: {} exists with other content", m.msg_id.as_i64()).into())
        }
    }

    /// Stores `m` unless its key exists (then judged a retry or a conflict).
    async fn send_one(&self, m: &NewMessage) -> R<()> {
        for _ in 0..3 {
            match self.messages.insert_one(fair_message_doc(m)).await {
                Ok(_) => return Ok(()),
                Err(e) if duplicate(&e) => {
                    if self.judge(m).await? {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err("a copy kept being purged under the send".into())
    }

    /// A transition by hand: the replay lookup, the message as committed and the feed's highest
    /// position at once; the rules (`rule` gives the next lifecycle, or `None` when they refuse);
    /// ONE insert into `log` (event, new version, feed position and request record in one
    /// document, under the unique request, version and position keys) whose duplicate key is a
    /// lost race, read again; then the new lifecycle onto the document and its `todo` cleared,
    /// as imstore's commit does (5 round trips in series).
    async fn transition(
        &self,
        action: &str,
        conv: &str,
        id: i64,
        by: &str,
        request: &str,
        rule: impl Fn(&Document, i64) -> Option<Document>,
    ) -> R<()> {
        for _ in 0..16 {
            let record = self
                .log
                .find_one(doc! {"conversation_id": conv, "request_id": request})
                .projection(doc! {"record": 1});
            let message = self.committed(conv, id, false);
            let position = self
                .log
                .find_one(doc! {"conversation_id": conv, "seq": {"$gt": 0_i64}})
                .sort(doc! {"seq": -1})
                .projection(doc! {"seq": 1});
            let (record, message, position) =
                futures::try_join!(async { record.await.map_err(Into::into) }, message, async {
                    position.await.map_err(Into::into)
                },)?;
            if let Some(r) = record {
                // A replay: answered from its record, applied or not.
                let changed = r.get_document("record")?.get_bool("changed")?;
                return if changed {
                    Ok(())
                } else {
                    Err(format!("fair {action} of {id}: its request was refused before").into())
                };
            }
            let d = message.ok_or_else(|| format!("fair {action}: {id} not found"))?;
            let now = now_ms();
            let Some(next) = rule(&d, now) else {
                return Err(format!("fair {action} of {id} did not apply").into());
            };
            let (msg, _) = version_of(&d)?;
            let version = int(&next, "version").ok_or("no version")?;
            let seq = position.map_or(Some(0), |p| int(&p, "seq")).unwrap_or(0) + 1;
            let entry_id = mongodb::bson::oid::ObjectId::new();
            let entry = doc! {
                "_id": entry_id,
                "kind": "event",
                "conversation_id": conv,
                "seq": seq,
                "msg": msg,
                "version": version,
                "next": next.clone(),
                "todo": "cache",
                "request_id": request,
                "msg_id": id,
                "at": now,
                "record": {
                    "action": action,
                    "requester": by,
                    "status": next.get("status").cloned().unwrap_or(Bson::Int32(0)),
                    "version": version,
                    "changed": true,
                },
            };
            match self.log.insert_one(entry).await {
                Ok(_) => {}
                Err(e) if duplicate(&e) => continue,
                Err(e) => return Err(e.into()),
            }
            let mut unset = Document::new();
            for f in LIFECYCLE {
                if !next.contains_key(f) {
                    unset.insert(f, "");
                }
            }
            let mut update = doc! {"$set": next};
            if !unset.is_empty() {
                update.insert("$unset", unset);
            }
            self.messages
                .update_one(doc! {"_id": msg, "version": {"$lt": version}}, update)
                .await?;
            self.log
                .update_one(doc! {"_id": entry_id}, doc! {"$unset": {"todo": ""}})
                .await?;
            return Ok(());
        }
        Err(format!("fair {action} of {id} kept losing its race").into())
    }
}

/// A new message's document as imstore writes it: a fresh lifecycle at version 1.
fn fair_message_doc(m: &NewMessage) -> Document {
    let mut d = message_doc(m);
    if let Some(a) = &m.attachment {
        d.insert(
            "attachment",
            doc! {"key": a.key.as_str(), "size": a.size as i64, "mime": a.mime.as_str()},
        );
    }
    d
}

/// The lifecycle fields of `d` as a `next` document, with `changes` applied (`None` removes).
fn next_of(d: &Document, changes: &[(&str, Option<Bson>)]) -> Document {
    let mut next = Document::new();
    for f in LIFECYCLE {
        if let Some(v) = d.get(f) {
            next.insert(f, v.clone());
        }
    }
    for (f, v) in changes {
        match v {
            Some(v) => next.insert(*f, v.clone()),
            None => next.remove(*f),
        };
    }
    next
}

#[async_trait]
impl Fair for MongoFair {
    fn round_trips(&self, path: &str) -> Option<u32> {
        match path {
            "send" | "batch_send_1000" => Some(1),
            "point_read" | "latest_page" => Some(2),
            "feed_page" => Some(3),
            "recall" => Some(5),
            _ => None,
        }
    }
    async fn send(&self, m: &NewMessage) -> R<()> {
        self.send_one(m).await
    }
    async fn send_batch(&self, ms: &[NewMessage]) -> R<()> {
        let docs: Vec<Document> = ms.iter().map(fair_message_doc).collect();
        let dups = match self.messages.insert_many(docs).ordered(false).await {
            Ok(_) => return Ok(()),
            Err(e) => duplicates(e)?,
        };
        for i in dups {
            let m = ms
                .get(i)
                .ok_or("a write error for an unknown batch index")?;
            if !self.judge(m).await? {
                self.send_one(m).await?;
            }
        }
        Ok(())
    }
    async fn get(&self, conv: &str, id: i64, viewer: &str) -> R<()> {
        let d = self
            .committed(conv, id, true)
            .await?
            .ok_or("fair: message not found")?;
        mongo_view(&d, None, viewer)
    }
    async fn latest(&self, conv: &str, limit: u32, viewer: &str) -> R<usize> {
        // One more than asked says whether older messages exist; a purged document not deleted
        // yet is skipped and the page filled from further on, as imstore's page is.
        let wanted = limit as usize + 1;
        let mut page: Vec<(Document, Option<Document>)> = Vec::with_capacity(wanted);
        let mut cursor: Option<i64> = None;
        while page.len() < wanted {
            let ask = wanted - page.len();
            let mut filter = doc! {"conversation_id": conv};
            if let Some(c) = cursor {
                filter.insert("msg_id", doc! {"$lt": c});
            }
            let docs: Vec<Document> = self
                .messages
                .find(filter)
                .sort(doc! {"msg_id": -1})
                .limit(ask as i64)
                .await?
                .try_collect()
                .await?;
            if docs.is_empty() {
                break;
            }
            let exhausted = docs.len() < ask;
            cursor = docs.last().and_then(|d| int(d, "msg_id"));
            let versions = docs.iter().map(version_of).collect::<R<Vec<_>>>()?;
            let found = self.commits_after(&versions).await?;
            for (d, (id, _)) in docs.into_iter().zip(versions) {
                match Self::latest_of(&found, &id)? {
                    Latest::Current => page.push((d, None)),
                    Latest::Behind(next) => {
                        let next = next.clone();
                        page.push((d, Some(next)));
                    }
                    Latest::Purged => {}
                }
            }
            if exhausted {
                break;
            }
        }
        let shown = page.len().min(limit as usize);
        for (d, next) in &page[..shown] {
            mongo_view(d, next.as_ref(), viewer)?;
        }
        std::hint::black_box(page.len() > shown);
        Ok(shown)
    }
    async fn recall(&self, conv: &str, id: i64, by: &str, request: &str, window_ms: i64) -> R<()> {
        self.transition("recall", conv, id, by, request, |d, now| {
            let normal = int(d, "status") == Some(0);
            let sender = text(d, "sender_id") == Some(by);
            let within = int(d, "created_at").is_some_and(|c| now - c <= window_ms);
            let version = int(d, "version")?;
            (normal && sender && within).then(|| {
                next_of(
                    d,
                    &[
                        ("status", Some(Bson::Int32(1))),
                        ("version", Some(Bson::Int64(version + 1))),
                        ("recalled_at", Some(Bson::Int64(now))),
                        ("recalled_by", Some(Bson::String(by.to_owned()))),
                        ("restored_at", None),
                        ("retired_at", Some(Bson::Int64(now))),
                    ],
                )
            })
        })
        .await
    }
    async fn restore(&self, conv: &str, id: i64, by: &str, request: &str, window_ms: i64) -> R<()> {
        self.transition("restore", conv, id, by, request, |d, now| {
            let recalled = int(d, "status") == Some(1);
            let sender = text(d, "sender_id") == Some(by) && text(d, "recalled_by") == Some(by);
            let within = int(d, "recalled_at").is_some_and(|r| now - r <= window_ms);
            let version = int(d, "version")?;
            (recalled && sender && within).then(|| {
                next_of(
                    d,
                    &[
                        ("status", Some(Bson::Int32(0))),
                        ("version", Some(Bson::Int64(version + 1))),
                        ("recalled_at", None),
                        ("restored_at", Some(Bson::Int64(now))),
                        ("retired_at", None),
                    ],
                )
            })
        })
        .await
    }
    async fn feed(&self, conv: &str, after: u64, limit: u32) -> R<usize> {
        // The unfinished purges first (their events are skipped), then the events, then where
        // the feed stands, read after them: 3 round trips in series, as imstore's pull.
        let purging: Vec<mongodb::bson::oid::ObjectId> = self
            .log
            .find(doc! {"todo": "finish", "conversation_id": conv})
            .projection(doc! {"msg": 1})
            .await?
            .try_collect::<Vec<Document>>()
            .await?
            .iter()
            .map(|e| e.get_object_id("msg"))
            .collect::<Result<_, _>>()?;
        let wanted = limit as usize;
        let mut events = Vec::with_capacity(wanted);
        let mut after_seq = after as i64;
        while events.len() < wanted {
            let ask = wanted - events.len();
            let docs: Vec<Document> = self
                .log
                .find(doc! {"conversation_id": conv, "kind": "event", "seq": {"$gt": after_seq}})
                .sort(doc! {"seq": 1})
                .limit(ask as i64)
                .await?
                .try_collect()
                .await?;
            let exhausted = docs.len() < ask;
            for e in docs {
                after_seq = int(&e, "seq").ok_or("no seq")?;
                if !purging.contains(&e.get_object_id("msg")?) {
                    // Every field a device needs: who changed it and when.
                    let r = e.get_document("record")?;
                    events.push((
                        after_seq,
                        int(&e, "msg_id"),
                        int(r, "status"),
                        int(&e, "version"),
                        int(&e, "at"),
                        text(r, "requester").map(str::to_owned),
                    ));
                }
            }
            if exhausted {
                break;
            }
        }
        let highest = |filter: Document| async move {
            let top = self
                .log
                .find_one(filter)
                .sort(doc! {"seq": -1})
                .projection(doc! {"seq": 1})
                .await?;
            Ok::<i64, crate::harness::BoxError>(top.and_then(|t| int(&t, "seq")).unwrap_or(0))
        };
        let removing = async {
            if purging.is_empty() {
                return Ok(0);
            }
            let msgs: Vec<Bson> = purging.iter().map(|m| Bson::ObjectId(*m)).collect();
            highest(doc! {"conversation_id": conv, "seq": {"$gt": 0_i64}, "kind": "event", "msg": {"$in": msgs}}).await
        };
        let (head, gone, removing) = futures::try_join!(
            highest(
                doc! {"conversation_id": conv, "seq": {"$gt": 0_i64}, "kind": {"$in": ["event", "gone"]}}
            ),
            highest(doc! {"conversation_id": conv, "seq": {"$gt": 0_i64}, "kind": "gone"}),
            removing,
        )?;
        std::hint::black_box((head.max(gone), gone.max(removing)));
        let n = events.len();
        std::hint::black_box(events);
        Ok(n)
    }
}
