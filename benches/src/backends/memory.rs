//! MemoryStore, against a baseline that is the bare data structure (maps behind one lock).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use imstore_core::{MemoryStore, NewMessage, StoreSettings};

use crate::harness::R;
use crate::target::{Handle, Raw, Target};

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
        self.send_batch(ms).await
    }
    async fn seed_feed(&self, conv: &str, n: u64) -> R<()> {
        let mut g = self.events.write().map_err(|_| "poisoned")?;
        let e = g.entry(conv.to_owned()).or_default();
        for seq in 1..=n {
            e.push((seq, seq as i64, 1));
        }
        Ok(())
    }
}
