//! Races and retries: duplicate requests, concurrent devices, recall racing restore or delete (CONTRACT.md, "Races and retries").

use super::*;

/// The same recall sent twice succeeds twice, changes the message once and records one event.
pub async fn repeated_recall_succeeds_twice_with_one_event<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let req = c.request(Action::Recall, &c.alice, id);
    let first = h.store.transition(req.clone()).await.unwrap();
    let second = h.store.transition(req).await.unwrap();
    assert!(first.changed && !first.replayed);
    assert!(second.replayed);
    assert_eq!(
        (second.status, second.version),
        (first.status, first.version)
    );
    assert_eq!(all_events(&h, &c.conv).await.len(), 1);
    h.finish().await;
}

/// Repeated restores and deletes (same request id) are likewise applied once, with one event each.
pub async fn repeated_restore_and_delete_are_applied_once<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    let restore = c.request(Action::Restore, &c.alice, id);
    let delete = c.request(Action::Delete, &c.alice, id);
    for req in [restore, delete] {
        let a = h.store.transition(req.clone()).await.unwrap();
        let b = h.store.transition(req).await.unwrap();
        assert_eq!((a.status, a.version), (b.status, b.version));
        assert!(b.replayed);
    }
    let events = all_events(&h, &c.conv).await;
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    h.finish().await;
}

/// Two devices recalling with their own request ids: both succeed, one transition, one event.
pub async fn recall_from_two_devices_changes_the_message_once<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let phone = h
        .store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    let laptop = h
        .store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    assert!(phone.changed && !laptop.changed && !laptop.replayed);
    assert_eq!((laptop.status, laptop.version), (Status::Recalled, 2));
    assert_eq!(all_events(&h, &c.conv).await.len(), 1);
    h.finish().await;
}

/// 16 copies of one recall request (a client retrying while the first is in flight) racing each
/// other: every copy succeeds with the first outcome, exactly one applies it, one event.
pub async fn concurrent_retries_of_one_request_apply_it_once<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let req = c.request(Action::Recall, &c.alice, id);
    let outs: Vec<_> = race(&h, vec![req; 16])
        .await
        .into_iter()
        .map(|r| r.expect("every copy of the request succeeds"))
        .collect();
    assert_eq!(
        outs.iter().filter(|o| !o.replayed).count(),
        1,
        "exactly one copy applies the request, the others replay it: {outs:?}"
    );
    assert!(
        outs.iter()
            .all(|o| o.changed && (o.status, o.version) == (Status::Recalled, 2)),
        "every copy answers with the first outcome: {outs:?}"
    );
    let events = all_events(&h, &c.conv).await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].msg_id, events[0].version), (id, 2));
    h.finish().await;
}

/// One request id used at the same time for recalls of two different messages: one recall
/// applies, the other is refused as a conflict, and only one message changes.
pub async fn concurrent_reuse_of_a_request_id_applies_one_request<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let x = sent(&h, c.text("x")).await;
    let y = sent(&h, c.text("y")).await;
    let on_x = c.request(Action::Recall, &c.alice, x);
    let mut on_y = c.request(Action::Recall, &c.alice, y);
    on_y.request_id = on_x.request_id.clone();
    let results = race(&h, vec![on_x, on_y]).await;
    let applied: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(applied.len(), 1, "{results:?}");
    assert!(applied[0].changed && !applied[0].replayed);
    assert_eq!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .map(Error::kind)
            .collect::<Vec<_>>(),
        vec![ErrorKind::Conflict]
    );
    let mut recalled = 0;
    for id in [x, y] {
        if h.store.get(&c.conv, id, &c.alice).await.unwrap().status == Status::Recalled {
            recalled += 1;
        }
    }
    assert_eq!(recalled, 1);
    let events = all_events(&h, &c.conv).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].msg_id, applied[0].msg_id);
    h.finish().await;
}

/// 64 concurrent recalls of one message: all succeed, exactly one transition and one event, one final state.
pub async fn concurrent_recalls_make_exactly_one_transition<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let reqs: Vec<_> = (0..64)
        .map(|_| c.request(Action::Recall, &c.alice, id))
        .collect();
    let results = futures::future::join_all(reqs.into_iter().map(|r| h.store.transition(r))).await;
    let outs: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("every recall succeeds"))
        .collect();
    assert_eq!(outs.iter().filter(|o| o.changed).count(), 1);
    assert!(
        outs.iter()
            .all(|o| (o.status, o.version) == (Status::Recalled, 2))
    );
    let events = all_events(&h, &c.conv).await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].msg_id, events[0].version), (id, 2));
    h.finish().await;
}

/// 40 concurrent sends into ONE conversation, each sent twice at once and a third of them
/// also with other content under the same id: every id is stored once, identical copies answer
/// inserted-or-already-there, exactly one of two differing copies wins and the other is a
/// conflict, and the stored content is the winner's.
pub async fn concurrent_sends_into_one_conversation_store_each_message_once<F: StoreFactory>(
    f: &F,
) {
    let (h, c) = start(f).await;
    let msgs: Vec<NewMessage> = (0..40).map(|i| c.text(&format!("m{i}"))).collect();
    let mut calls = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        calls.push((i, m.clone()));
        calls.push((i, m.clone()));
        if i % 3 == 0 {
            let mut other = m.clone();
            other.content = format!("other {i}").into_bytes();
            calls.push((i, other));
        }
    }
    let results =
        futures::future::join_all(calls.iter().map(|(_, m)| h.store.insert(m.clone()))).await;
    let mut winner: Vec<Option<Vec<u8>>> = vec![None; msgs.len()];
    for ((i, m), r) in calls.iter().zip(&results) {
        match r {
            Ok(InsertOutcome::Inserted) => {
                assert!(winner[*i].is_none(), "message {i} stored twice");
                winner[*i] = Some(m.content.clone());
            }
            Ok(InsertOutcome::AlreadyExists) => {}
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "message {i}: {e}"),
        }
    }
    for (i, m) in msgs.iter().enumerate() {
        let won = winner[i]
            .clone()
            .expect("one copy of every message is stored");
        let copies: Vec<_> = calls
            .iter()
            .zip(&results)
            .filter(|((j, _), _)| *j == i)
            .collect();
        for ((_, sent_m), r) in &copies {
            // Identical to the winner: never a conflict; differing: always one.
            assert_eq!(
                r.is_err(),
                sent_m.content != won,
                "message {i}: a copy with {} content got {r:?}",
                if sent_m.content == won {
                    "the stored"
                } else {
                    "other"
                }
            );
        }
        let v = h.store.get(&c.conv, m.msg_id, &c.bob).await.unwrap();
        assert_eq!(v.body.unwrap().content, won, "message {i} holds its winner");
    }
    let (ids, _) = page_all(&h, &c, ListOptions::newest(15)).await;
    assert_eq!(
        ids.len(),
        msgs.len(),
        "the page walk lists every message once"
    );
    h.finish().await;
}

/// A storm of changes in ONE conversation: 30 messages each recalled at once by a request, a
/// retry of that request and a second device's recall. Each message changes once, every call
/// succeeds, and the feed holds exactly one event per message at distinct, increasing
/// positions, agreeing with what `get` shows.
pub async fn a_storm_of_changes_in_one_conversation_applies_each_once<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let msgs: Vec<NewMessage> = (0..30).map(|i| c.text(&format!("m{i}"))).collect();
    h.store.insert_batch(msgs.clone()).await.unwrap();
    let mut reqs = Vec::new();
    for m in &msgs {
        let r = c.request(Action::Recall, &c.alice, m.msg_id);
        reqs.push(r.clone());
        reqs.push(r);
        reqs.push(c.request(Action::Recall, &c.alice, m.msg_id));
    }
    let outs: Vec<TransitionOutcome> = race(&h, reqs)
        .await
        .into_iter()
        .map(|r| r.expect("every recall of the storm succeeds"))
        .collect();
    assert!(
        outs.iter()
            .all(|o| (o.status, o.version) == (Status::Recalled, 2))
    );
    for (i, o) in outs.chunks(3).enumerate() {
        // The request and its retry are one request: one answer. It or the other device's
        // request made the change, not both.
        assert_eq!(
            o[0].changed, o[1].changed,
            "message {i}: a retry answered otherwise"
        );
        assert!(
            o[0].changed != o[2].changed,
            "message {i}: changed {} times",
            u8::from(o[0].changed) + u8::from(o[2].changed)
        );
    }
    let events = all_events(&h, &c.conv).await;
    assert_eq!(events.len(), msgs.len(), "one event per message");
    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "distinct, increasing positions"
    );
    let mut seen: Vec<MsgId> = events.iter().map(|e| e.msg_id).collect();
    seen.sort();
    let mut want: Vec<MsgId> = msgs.iter().map(|m| m.msg_id).collect();
    want.sort();
    assert_eq!(seen, want, "every message's event, none twice");
    for e in &events {
        assert_eq!((e.status, e.version), (Status::Recalled, 2));
        let v = h.store.get(&c.conv, e.msg_id, &c.bob).await.unwrap();
        assert_eq!((v.status, v.version), (e.status, e.version));
    }
    h.finish().await;
}

pub(crate) async fn race<F: StoreFactory>(
    h: &Harness<'_, F>,
    reqs: Vec<TransitionRequest>,
) -> Vec<Result<TransitionOutcome>> {
    futures::future::join_all(reqs.into_iter().map(|r| h.store.transition(r))).await
}

pub(crate) fn assert_feed_matches(events: &[ChangeEvent], final_view: &MessageView) {
    let versions: Vec<u32> = events.iter().map(|e| e.version).collect();
    let want: Vec<u32> = (2..=final_view.version).collect();
    assert_eq!(versions, want, "one event per version, in order");
    if let Some(last) = events.last() {
        assert_eq!(
            (last.status, last.version),
            (final_view.status, final_view.version)
        );
    }
}

/// A recall racing a restore ends in one consistent state whose events match its version history.
pub async fn recall_racing_restore_ends_consistent<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    for round in 0..8 {
        let id = sent(&h, c.text(&format!("round {round}"))).await;
        h.store
            .transition(c.request(Action::Recall, &c.alice, id))
            .await
            .unwrap();
        let results = race(
            &h,
            vec![
                c.request(Action::Restore, &c.alice, id),
                c.request(Action::Recall, &c.alice, id),
                c.request(Action::Restore, &c.alice, id),
            ],
        )
        .await;
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        let v = h.store.get(&c.conv, id, &c.alice).await.unwrap();
        let events: Vec<_> = all_events(&h, &c.conv)
            .await
            .into_iter()
            .filter(|e| e.msg_id == id)
            .collect();
        assert_feed_matches(&events, &v);
    }
    h.finish().await;
}

/// A recall racing a delete ends Deleted or consistent, never torn, with events matching its versions.
pub async fn recall_racing_delete_ends_consistent<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    for round in 0..8 {
        let id = sent(&h, c.text(&format!("round {round}"))).await;
        let results = race(
            &h,
            vec![
                c.request(Action::Recall, &c.alice, id),
                c.moderator_request(Action::Delete, &c.mia, id),
                c.request(Action::Recall, &c.alice, id),
            ],
        )
        .await;
        for r in &results {
            match r {
                Ok(_) => {}
                Err(e) => assert_eq!(
                    e.kind(),
                    ErrorKind::InvalidState,
                    "a recall that lost to the delete"
                ),
            }
        }
        let v = h.store.get(&c.conv, id, &c.alice).await.unwrap();
        assert_eq!(v.status, Status::Deleted);
        assert!(v.body.is_none());
        let events: Vec<_> = all_events(&h, &c.conv)
            .await
            .into_iter()
            .filter(|e| e.msg_id == id)
            .collect();
        assert_feed_matches(&events, &v);
    }
    h.finish().await;
}

/// A moderator's recall racing the sender's restore of the sender's own recall ends recalled by
/// the moderator, whichever runs first, with one event per version.
pub async fn moderator_recall_racing_the_senders_restore_ends_recalled<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    let results = race(
        &h,
        vec![
            c.request(Action::Restore, &c.alice, id),
            c.moderator_request(Action::Recall, &c.mia, id),
        ],
    )
    .await;
    let moderator = results[1]
        .as_ref()
        .expect("the moderator's recall succeeds");
    assert!(moderator.changed);
    let v = h.store.get(&c.conv, id, &c.bob).await.unwrap();
    assert_eq!(v.status, Status::Recalled, "{results:?}");
    assert_eq!(v.tombstone.as_ref().unwrap().by, c.mia);
    assert_feed_matches(&all_events(&h, &c.conv).await, &v);
    h.finish().await;
}

/// Copies of one no-op request racing a change to its message all get the same answer: the one
/// recorded (an outcome and its record are one fact).
pub async fn retries_in_flight_of_a_no_op_all_get_the_recorded_answer<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    for _ in 0..8 {
        let id = sent(&h, c.text("x")).await;
        h.store
            .transition(c.request(Action::Recall, &c.alice, id))
            .await
            .unwrap();
        // A second device's recall finds it recalled (a no-op), while the sender restores.
        let second = c.request(Action::Recall, &c.alice, id);
        let mut reqs = vec![second.clone(); 6];
        reqs.insert(3, c.request(Action::Restore, &c.alice, id));
        let results = race(&h, reqs).await;
        let copies: Vec<_> = results
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, r)| r.as_ref().expect("a recall by the sender succeeds"))
            .map(|o| (o.status, o.version, o.changed))
            .collect();
        assert!(
            copies.windows(2).all(|w| w[0] == w[1]),
            "every copy of one request answers alike: {results:?}"
        );
        let recorded = h.store.transition(second).await.unwrap();
        assert!(recorded.replayed);
        assert_eq!(
            (recorded.status, recorded.version, recorded.changed),
            copies[0],
            "and the record says the same"
        );
    }
    h.finish().await;
}

/// A reused request id is answered `Conflict` only once the request it collides with has taken
/// effect: right after the conflict, the winner's change is visible.
pub async fn conflict_on_a_reused_id_follows_the_winners_effect<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    for _ in 0..8 {
        let x = sent(&h, c.text("x")).await;
        let y = sent(&h, c.text("y")).await;
        let on_x = c.request(Action::Recall, &c.alice, x);
        let mut on_y = c.request(Action::Recall, &c.alice, y);
        on_y.request_id = on_x.request_id.clone();
        let (rx, ry) = futures::join!(
            async {
                let r = h.store.transition(on_x).await;
                let seen = h.store.get(&c.conv, y, &c.bob).await.unwrap().status;
                (r, seen)
            },
            async {
                let r = h.store.transition(on_y).await;
                let seen = h.store.get(&c.conv, x, &c.bob).await.unwrap().status;
                (r, seen)
            }
        );
        for (result, other_seen) in [&rx, &ry] {
            if let Err(e) = result {
                assert_eq!(e.kind(), ErrorKind::Conflict);
                assert_eq!(
                    *other_seen,
                    Status::Recalled,
                    "a conflict was answered before the winning recall took effect"
                );
            }
        }
        assert_eq!(
            [&rx.0, &ry.0].iter().filter(|r| r.is_ok()).count(),
            1,
            "{rx:?} {ry:?}"
        );
    }
    h.finish().await;
}

/// A device that pulls an event and reads the message right after sees at least that version:
/// what the feed told it is never contradicted by a later read.
pub async fn read_after_feed_sees_the_change<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(sent(&h, c.text(&format!("m{i}"))).await);
    }
    let writers = async {
        let reqs = ids
            .iter()
            .map(|id| c.request(Action::Recall, &c.alice, *id))
            .collect();
        race(&h, reqs).await
    };
    let reader = async {
        let mut cursor = FeedCursor::START;
        let mut seen = 0;
        let mut polls = 0;
        while seen < ids.len() && polls < 2_000 {
            polls += 1;
            let page = h
                .store
                .changes_since(&c.conv, &c.bob, cursor, 50)
                .await
                .unwrap();
            for e in &page.events {
                let v = h.store.get(&c.conv, e.msg_id, &c.bob).await.unwrap();
                assert!(
                    v.version >= e.version,
                    "the feed showed version {} of {} but a later get shows {}",
                    e.version,
                    e.msg_id,
                    v.version
                );
                if v.version == e.version {
                    assert_eq!(v.status, e.status);
                    assert!(v.body.is_none(), "a recalled message shows no content");
                }
                seen += 1;
            }
            cursor = page.next;
            tokio::task::yield_now().await;
        }
        seen
    };
    let (results, seen) = futures::join!(writers, reader);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(seen, ids.len());
    h.finish().await;
}
