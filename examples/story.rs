//! The article's story on the embedded default store: send, recall, a retried recall, tombstones,
//! restore, an offline device catching up from the change feed, and the purge after retention.
//!
//! Run it with `cargo run --example story`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use imstore::*;

const DAY: Duration = Duration::from_secs(86_400);

/// One of a user's devices: what it has seen, and where it is in the change feed.
struct Device {
    name: &'static str,
    /// Whose device it is: the feed is read as its owner sees it.
    owner: UserId,
    cursor: FeedCursor,
    seen: HashMap<MsgId, (Status, u32)>,
}

impl Device {
    fn new(name: &'static str, owner: &UserId) -> Self {
        Device {
            name,
            owner: owner.clone(),
            cursor: FeedCursor::START,
            seen: HashMap::new(),
        }
    }

    /// Applies pulled events; an event not newer than what the device holds is a no-op.
    async fn sync(&mut self, store: &dyn MessageStore, conv: &ConversationId) -> Result<usize> {
        let page = store
            .drain_changes(conv, &self.owner, self.cursor, 50)
            .await?;
        let mut applied = 0;
        for e in &page.events {
            let held = self.seen.get(&e.msg_id).map(|s| s.1).unwrap_or(1);
            if e.version > held {
                self.seen.insert(e.msg_id, (e.status, e.version));
                applied += 1;
            }
        }
        self.cursor = page.next;
        Ok(applied)
    }
}

fn show(view: &MessageView) -> String {
    match (&view.body, &view.tombstone) {
        (Some(body), None) => format!("\"{}\"", String::from_utf8_lossy(&body.content)),
        (Some(body), Some(t)) => format!(
            "[recalled by {} - only you can still see: \"{}\", tap to re-edit]",
            t.by,
            String::from_utf8_lossy(&body.content)
        ),
        (None, Some(t)) if t.status == Status::Deleted => format!("[deleted by {}]", t.by),
        (None, Some(t)) => format!("[{} recalled a message]", t.by),
        (None, None) => "[nothing to show]".to_string(),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let clock = ManualClock::starting_now();
    let keys = KeyRing::new(EncryptionKey::generate(KeyId(1)));
    let settings = StoreSettings {
        policy: Policy::builder()
            .recall_window(Duration::from_secs(5 * 60))
            .build()?,
        codec: ContentCodec::default().with_encryption(keys),
        clock: Arc::new(clock.clone()),
    };
    let store: Arc<dyn MessageStore> = Arc::new(MemoryStore::new(settings.clone()));
    let ids = MsgIdGenerator::new(1, settings.clock.clone())?;

    let group = ConversationId::new("launch-team")?;
    let alice = UserId::new("alice")?;
    let bob = UserId::new("bob")?;
    let carol = UserId::new("carol")?;
    let mut phone = Device::new("alice's phone", &alice);
    let mut laptop = Device::new("alice's laptop", &alice);
    let mut tablet = Device::new("alice's tablet (offline)", &alice);

    println!("== 1. Alice sends to the group (bob, carol and 1,997 others)");
    let msg = NewMessage::text(
        ids.next_id()?,
        group.clone(),
        alice.clone(),
        "The launch moves to Thursday",
    );
    let file = NewMessage {
        msg_type: MessageType::File,
        attachment: Some(Attachment {
            key: "blobs/launch-plan-v1.pdf".into(),
            size: 482_113,
            mime: "application/pdf".into(),
        }),
        ..NewMessage::text(
            ids.next_id()?,
            group.clone(),
            alice.clone(),
            "launch-plan-v1.pdf",
        )
    };
    store.insert_batch(vec![msg.clone(), file.clone()]).await?;
    println!(
        "   bob sees: {}",
        show(&store.get(&group, msg.msg_id, &bob).await?)
    );

    println!(
        "== 2. One minute later, alice recalls it from her phone (it said Thursday, she meant Friday)"
    );
    clock.advance(Duration::from_secs(60));
    let recall = TransitionRequest {
        action: Action::Recall,
        requester: alice.clone(),
        authority: Authority::Member,
        conversation_id: group.clone(),
        msg_id: msg.msg_id,
        client_ts: clock.now(),
        request_id: RequestId::new("phone-7f3a")?,
    };
    let first = store.transition(recall.clone()).await?;
    println!(
        "   recall: status {:?}, version {}, changed {}",
        first.status, first.version, first.changed
    );

    println!("== 3. The phone's network flakes and it sends the same recall again");
    let retry = store.transition(recall.clone()).await?;
    println!(
        "   retry: status {:?}, version {}, replayed {} (applied once, one event)",
        retry.status, retry.version, retry.replayed
    );
    let feed = store
        .changes_since(&group, &bob, FeedCursor::START, 50)
        .await?;
    println!(
        "   the group's change feed holds {} event for 2,000 members: members pull, nobody fans out",
        feed.events.len()
    );

    println!("== 4. What everyone sees now");
    for viewer in [&bob, &carol] {
        println!(
            "   {viewer} sees: {}",
            show(&store.get(&group, msg.msg_id, viewer).await?)
        );
    }
    println!(
        "   alice sees: {}",
        show(&store.get(&group, msg.msg_id, &alice).await?)
    );
    println!("   the phone and laptop are online and apply the pushed event:");
    for d in [&mut phone, &mut laptop] {
        let n = d.sync(store.as_ref(), &group).await?;
        println!("     {} applied {n} event(s)", d.name);
    }

    println!("== 5. Thinking better of it, alice restores the message from her laptop");
    clock.advance(Duration::from_secs(30));
    let restored = store
        .restore(
            &alice,
            &group,
            msg.msg_id,
            clock.now(),
            RequestId::new("laptop-19c2")?,
        )
        .await?;
    println!(
        "   restore: status {:?}, version {}",
        restored.status, restored.version
    );
    println!(
        "   bob sees: {}",
        show(&store.get(&group, msg.msg_id, &bob).await?)
    );

    println!("== 6. The captured recall is replayed by an attacker after the restore");
    let replay = store
        .transition(TransitionRequest {
            client_ts: clock.now(),
            ..recall
        })
        .await?;
    println!(
        "   answered with its first outcome (replayed {}), the message stays {:?}",
        replay.replayed,
        store.get(&group, msg.msg_id, &bob).await?.status
    );

    println!("== 7. Alice deletes the outdated file; bob may no longer download it");
    store
        .delete(
            &alice,
            Authority::Member,
            &group,
            file.msg_id,
            clock.now(),
            RequestId::new("laptop-19c3")?,
        )
        .await?;
    println!(
        "   bob's download check: {:?}",
        store.attachment_access(&group, file.msg_id, &bob).await?
    );

    println!("== 8. The tablet comes back online and pulls the feed from its cursor");
    let n = tablet.sync(store.as_ref(), &group).await?;
    println!("   {} applied {n} event(s); it now holds:", tablet.name);
    let mut held: Vec<_> = tablet.seen.iter().collect();
    held.sort_by_key(|(id, _)| **id);
    for (id, (status, version)) in held {
        println!("     msg {id}: {status:?} v{version}");
    }
    for d in [&mut phone, &mut laptop] {
        d.sync(store.as_ref(), &group).await?;
    }
    assert_eq!(tablet.seen, phone.seen, "every device converges");
    println!("   all three devices agree");

    println!("== 9. Thirty days later the retention purge runs");
    clock.advance(30 * DAY);
    let report = store.purge_all(PurgeOptions::default()).await?;
    println!(
        "   purged {} message(s) and {} event(s); files the service may now delete: {:?}",
        report.messages, report.events, report.released_attachments
    );
    println!(
        "   the restored message is still there: {}",
        show(&store.get(&group, msg.msg_id, &bob).await?)
    );
    Ok(())
}
