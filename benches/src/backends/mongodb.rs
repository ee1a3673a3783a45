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
use crate::target::{Handle, Raw, SyncStores, Target};

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
