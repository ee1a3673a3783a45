//! MemoryStore, against a baseline that is the bare data structure (maps behind one lock), and a
//! fair baseline that keeps the same guarantees by hand (conflict check, viewer rendering, replay
//! check, event and request record) behind one lock, as MemoryStore does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use imstore_core::{MemoryStore, NewMessage, StoreSettings};

use crate::harness::R;
use crate::now_ms;
use crate::target::{Fair, Handle, Raw, Target};

/// The in-memory target: one MemoryStore shared by every codec (reconfigured per codec).
#[derive(Default)]
pub struct MemoryTarget {
    base: MemoryStore,
    raw: Arc<MemoryRaw>,
}

#[async_trait]
impl Target for MemoryTarget {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn namespace(&self) -> String {
        "process memory".into()
    }
    fn server_version(&self) -> Option<String> {
        None
    }
    async fn open(&self, settings: StoreSettings) -> R<Handle> {
        Ok(Handle {
            store: Arc::new(self.base.reconfigured(settings)?),
            close: None,
        })
    }
    fn raw(&self) -> Arc<dyn Raw> {
        self.raw.clone()
    }
    fn fair(&self) -> Option<Arc<dyn Fair>> {
        Some(self.raw.fair.clone())
    }
    fn write_method(&self) -> String {
        "none: in-process store, no server to observe".into()
    }
    async fn write_counters(&self) -> R<Option<BTreeMap<String, u64>>> {
        Ok(None)
    }
    async fn drop_namespace(&self) -> R<()> {
        Ok(())
    }
}

struct Row {
    #[allow(dead_code)] // stored as a real row would be; the minimal read does not look at it
    sender: String,
    content: Vec<u8>,
    status: i16,
    recalled_at: Option<i64>,
}

/// (seq, msg_id, status)
type Event = (u64, i64, i16);

/// The bare structure: conversation → ordered messages, and conversation → events.
#[derive(Default)]
pub struct MemoryRaw {
    messages: RwLock<HashMap<String, BTreeMap<i64, Row>>>,
    events: RwLock<HashMap<String, Vec<Event>>>,
    /// The fair baseline's own structure, filled by the same `mirror` and `seed_feed` calls.
    fair: Arc<MemoryFair>,
}

fn row(m: &NewMessage) -> Row {
    Row {
        sender: m.sender_id.as_str().to_owned(),
        content: m.content.clone(),
        status: 0,
        recalled_at: None,
    }
}

#[async_trait]
impl Raw for MemoryRaw {
    async fn send(&self, m: &NewMessage) -> R<()> {
        let mut g = self.messages.write().map_err(|_| "poisoned")?;
        g.entry(m.conversation_id.as_str().to_owned())
            .or_default()
            .insert(m.msg_id.as_i64(), row(m));
        Ok(())
    }
    async fn send_batch(&self, ms: &[NewMessage]) -> R<()> {
        let mut g = self.messages.write().map_err(|_| "poisoned")?;
        for m in ms {
            g.entry(m.conversation_id.as_str().to_owned())
                .or_default()
                .insert(m.msg_id.as_i64(), row(m));
        }
        Ok(())
    }
    async fn get(&self, conv: &str, id: i64) -> R<()> {
        let g = self.messages.read().map_err(|_| "poisoned")?;
        let c = g
            .get(conv)
            .and_then(|c| c.get(&id))
            .map(|r| r.content.clone())
            .ok_or("baseline: message not found")?;
        std::hint::black_box(c);
        Ok(())
    }
    async fn latest(&self, conv: &str, limit: u32) -> R<usize> {
        let g = self.messages.read().map_err(|_| "poisoned")?;
        let page: Vec<(i64, Vec<u8>, i16)> = g
            .get(conv)
            .map(|c| {
                c.iter()
                    .rev()
                    .take(limit as usize)
                    .map(|(id, r)| (*id, r.content.clone(), r.status))
                    .collect()
            })
            .unwrap_or_default();
        Ok(std::hint::black_box(page).len())
    }
    async fn recall(&self, conv: &str, id: i64, _by: &str, at: i64) -> R<()> {
        let mut g = self.messages.write().map_err(|_| "poisoned")?;
        let r = g
            .get_mut(conv)
            .and_then(|c| c.get_mut(&id))
            .ok_or("baseline: message not found")?;
        if r.status == 0 {
            r.status = 1;
            r.recalled_at = Some(at);
        }
        Ok(())
    }
    async fn restore(&self, conv: &str, id: i64, _at: i64) -> R<()> {
        let mut g = self.messages.write().map_err(|_| "poisoned")?;
        let r = g
            .get_mut(conv)
            .and_then(|c| c.get_mut(&id))
            .ok_or("baseline: message not found")?;
        if r.status == 1 {
            r.status = 0;
            r.recalled_at = None;
        }
        Ok(())
    }
    async fn feed(&self, conv: &str, after: u64, limit: u32) -> R<usize> {
        let g = self.events.read().map_err(|_| "poisoned")?;
        let page: Vec<(u64, i64, i16)> = g
            .get(conv)
            .map(|e| {
                let start = e.partition_point(|x| x.0 <= after);
                e[start..].iter().take(limit as usize).copied().collect()
            })
            .unwrap_or_default();
        Ok(std::hint::black_box(page).len())
    }
    async fn mirror(&self, ms: &[NewMessage]) -> R<()> {
        self.fair.send_batch(ms).await?;
        self.send_batch(ms).await
    }
    async fn seed_feed(&self, conv: &str, n: u64) -> R<()> {
        self.fair.seed_feed(conv, n)?;
        let mut g = self.events.write().map_err(|_| "poisoned")?;
        let e = g.entry(conv.to_owned()).or_default();
        for seq in 1..=n {
            e.push((seq, seq as i64, 1));
        }
        Ok(())
    }
}

/// A message as the fair baseline keeps it: the whole row and its lifecycle.
struct FairRow {
    sender: String,
    msg_type: i32,
    content: Vec<u8>,
    status: i16,
    version: u32,
    created_at: i64,
    recalled_at: Option<i64>,
    recalled_by: Option<String>,
    restored_at: Option<i64>,
    deleted_at: Option<i64>,
    deleted_by: Option<String>,
}

/// A change event: seq, msg_id, status, version, at, by.
type FairEvent = (u64, i64, i16, u32, i64, String);

/// A request record: msg_id, action, requester, changed.
type FairRecord = (i64, &'static str, String, bool);

/// One conversation of the fair baseline: what MemoryStore keeps per conversation.
#[derive(Default)]
struct FairConversation {
    messages: BTreeMap<i64, FairRow>,
    events: BTreeMap<u64, FairEvent>,
    head: u64,
    purged_through: u64,
    requests: HashMap<String, FairRecord>,
}

/// The fair baseline: every conversation behind one lock (MemoryStore's atomicity), each job
/// checked and written by hand with the guarantees of imstore's path.
#[derive(Default)]
pub struct MemoryFair {
    conversations: RwLock<HashMap<String, FairConversation>>,
}

impl MemoryFair {
    /// `n` recall events in `conv`'s feed, one per message 1..=n.
    fn seed_feed(&self, conv: &str, n: u64) -> R<()> {
        let mut g = self.conversations.write().map_err(|_| "poisoned")?;
        let c = g.entry(conv.to_owned()).or_default();
        for seq in c.head + 1..=c.head + n {
            c.events
                .insert(seq, (seq, seq as i64, 1, 2, now_ms(), "alice".to_owned()));
        }
        c.head += n;
        Ok(())
    }
}

/// A row as `viewer` sees it: content only when normal, or to the sender of a recalled one.
fn fair_view(id: i64, r: &FairRow, viewer: &str) -> impl Sized {
    let shown = r.status == 0 || (r.status == 1 && r.sender == viewer);
    (
        id,
        r.msg_type,
        r.version,
        r.created_at,
        r.recalled_at,
        r.recalled_by.clone(),
        r.restored_at,
        r.deleted_at,
        r.deleted_by.clone(),
        shown.then(|| r.content.clone()),
    )
}

#[async_trait]
impl Fair for MemoryFair {
    fn round_trips(&self, _path: &str) -> Option<u32> {
        // In process: no server, no round trips.
        None
    }
    async fn send(&self, m: &NewMessage) -> R<()> {
        self.send_batch(std::slice::from_ref(m)).await
    }
    async fn send_batch(&self, ms: &[NewMessage]) -> R<()> {
        let now = now_ms();
        let mut g = self.conversations.write().map_err(|_| "poisoned")?;
        for m in ms {
            let c = g.entry(m.conversation_id.as_str().to_owned()).or_default();
            match c.messages.entry(m.msg_id.as_i64()) {
                std::collections::btree_map::Entry::Occupied(e) => {
                    let r = e.get();
                    // Never overwrites: the same copy is a retry, another a conflict.
                    if r.sender != m.sender_id.as_str()
                        || r.msg_type != m.msg_type.code()
                        || r.content != m.content
                    {
                        return Err(format!("conflict: {} exists", m.msg_id.get()).into());
                    }
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(FairRow {
                        sender: m.sender_id.as_str().to_owned(),
                        msg_type: m.msg_type.code(),
                        content: m.content.clone(),
                        status: 0,
                        version: 1,
                        created_at: now,
                        recalled_at: None,
                        recalled_by: None,
                        restored_at: None,
                        deleted_at: None,
                        deleted_by: None,
                    });
                }
            }
        }
        Ok(())
    }
    async fn get(&self, conv: &str, id: i64, viewer: &str) -> R<()> {
        let g = self.conversations.read().map_err(|_| "poisoned")?;
        let r = g
            .get(conv)
            .and_then(|c| c.messages.get(&id))
            .ok_or("fair: message not found")?;
        std::hint::black_box(fair_view(id, r, viewer));
        Ok(())
    }
    async fn latest(&self, conv: &str, limit: u32, viewer: &str) -> R<usize> {
        let g = self.conversations.read().map_err(|_| "poisoned")?;
        let Some(c) = g.get(conv) else {
            return Ok(0);
        };
        // One more than asked says whether older messages exist.
        let mut rows = c.messages.iter().rev();
        let page: Vec<_> = rows
            .by_ref()
            .take(limit as usize)
            .map(|(id, r)| fair_view(*id, r, viewer))
            .collect();
        let more = rows.next().is_some();
        let n = page.len();
        std::hint::black_box((page, more));
        Ok(n)
    }
    async fn recall(&self, conv: &str, id: i64, by: &str, request: &str, window_ms: i64) -> R<()> {
        let now = now_ms();
        let mut g = self.conversations.write().map_err(|_| "poisoned")?;
        let c = g.get_mut(conv).ok_or("fair: conversation not found")?;
        // A replay answers from its record.
        if let Some(record) = c.requests.get(request) {
            return match record {
                (m, "recall", r, true) if *m == id && r == by => Ok(()),
                _ => Err(format!("fair recall of {id}: request id used otherwise").into()),
            };
        }
        let r = c.messages.get_mut(&id).ok_or("fair: message not found")?;
        if r.status != 0 || r.sender != by || r.created_at < now - window_ms {
            return Err(format!("fair recall of {id} did not apply").into());
        }
        // The change, the next feed seq, its event and the record, together under the lock.
        r.status = 1;
        r.version += 1;
        r.recalled_at = Some(now);
        r.recalled_by = Some(by.to_owned());
        c.head += 1;
        let seq = c.head;
        c.events
            .insert(seq, (seq, id, 1, r.version, now, by.to_owned()));
        c.requests
            .insert(request.to_owned(), (id, "recall", by.to_owned(), true));
        Ok(())
    }
    async fn restore(&self, conv: &str, id: i64, by: &str, request: &str, window_ms: i64) -> R<()> {
        let now = now_ms();
        let mut g = self.conversations.write().map_err(|_| "poisoned")?;
        let c = g.get_mut(conv).ok_or("fair: conversation not found")?;
        if let Some(record) = c.requests.get(request) {
            return match record {
                (m, "restore", r, true) if *m == id && r == by => Ok(()),
                _ => Err(format!("fair restore of {id}: request id used otherwise").into()),
            };
        }
        let r = c.messages.get_mut(&id).ok_or("fair: message not found")?;
        // Only the sender, only of their own recall, inside the restore window.
        let own_recall = r.status == 1 && r.sender == by && r.recalled_by.as_deref() == Some(by);
        if !own_recall || r.recalled_at.is_none_or(|at| at < now - window_ms) {
            return Err(format!("fair restore of {id} did not apply").into());
        }
        r.status = 0;
        r.version += 1;
        r.recalled_at = None;
        r.restored_at = Some(now);
        c.head += 1;
        let seq = c.head;
        c.events
            .insert(seq, (seq, id, 0, r.version, now, by.to_owned()));
        c.requests
            .insert(request.to_owned(), (id, "restore", by.to_owned(), true));
        Ok(())
    }
    async fn feed(&self, conv: &str, after: u64, limit: u32) -> R<usize> {
        let g = self.conversations.read().map_err(|_| "poisoned")?;
        let Some(c) = g.get(conv) else {
            return Ok(0);
        };
        // The head and the purge mark with the page, under one lock: a device sees a gap.
        let page: Vec<FairEvent> = c
            .events
            .range(after + 1..)
            .take(limit as usize)
            .map(|(_, e)| e.clone())
            .collect();
        let n = page.len();
        std::hint::black_box((c.head, c.purged_through, page));
        Ok(n)
    }
}
