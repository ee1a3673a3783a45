//! The fresh process's side of the client-kill test: what it checks after the kill, the retries
//! of what the dead client left unanswered, and the purge after the retention.

use std::collections::BTreeMap;

use imstore_core::{
    ConversationId, ErrorKind, FeedCursor, InsertOutcome, MessageStore, MessageStoreExt, MsgId,
    PurgeOptions, Status,
};

use super::{ChildLog, ClientCrashReport, Found, is_recorded_refusal};
use crate::fixtures::user;

/// Checks every message the child sent against the store and the child's answers; returns the
/// messages found. `phase` prefixes every problem.
pub(super) async fn check<S: MessageStore + ?Sized>(
    store: &S,
    conv: &ConversationId,
    log: &ChildLog,
    phase: &str,
    problems: &mut Vec<String>,
) -> Found {
    let mut found = Found::new();
    for line in &log.garbled {
        problems.push(format!(
            "{phase}: the child printed a line nobody understands: {line:?}"
        ));
    }
    let bystander = user("auditor");
    let feed = match store
        .drain_changes(conv, &bystander, FeedCursor::START, 200)
        .await
    {
        Ok(page) => page,
        Err(e) => {
            problems.push(format!("{phase}: the feed cannot be read: {e}"));
            return found;
        }
    };
    // No purge and no legal hold ran, so every feed position is an event: contiguous seqs.
    for pair in feed.events.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            problems.push(format!(
                "{phase}: feed seq {} is followed by {}",
                pair[0].seq, pair[1].seq
            ));
        }
    }
    if let Some(last) = feed.events.last()
        && FeedCursor::at(conv, last.seq).ok() != Some(feed.next)
    {
        problems.push(format!(
            "{phase}: the feed's cursor is {:?} after its last event {}",
            feed.next, last.seq
        ));
    }
    let mut events: BTreeMap<MsgId, Vec<(u32, Status)>> = BTreeMap::new();
    for e in &feed.events {
        if !log.messages.contains_key(&e.msg_id) {
            problems.push(format!(
                "{phase}: an event of {} which nobody sent",
                e.msg_id
            ));
        }
        events
            .entry(e.msg_id)
            .or_default()
            .push((e.version, e.status));
    }
    for (id, sent) in &log.messages {
        let evs = events.get(id).cloned().unwrap_or_default();
        let stored = match store.audit(conv, *id).await {
            Ok(r) => r.message,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if log.inserted.contains(id) {
                    problems.push(format!("{phase}: acknowledged message {id} is gone"));
                }
                if !evs.is_empty() {
                    problems.push(format!(
                        "{phase}: message {id} does not exist but has events {evs:?}"
                    ));
                }
                continue;
            }
            Err(e) => {
                problems.push(format!("{phase}: message {id} cannot be audited: {e}"));
                continue;
            }
        };
        if stored.message.content != sent.content || stored.message.sender_id != sent.sender_id {
            problems.push(format!(
                "{phase}: message {id} is not what was sent (content or sender)"
            ));
        }
        let (status, version) = (stored.lifecycle.status, stored.lifecycle.version);
        found.insert(*id, (status, version));
        let versions: Vec<u32> = evs.iter().map(|(v, _)| *v).collect();
        let want: Vec<u32> = (2..=version).collect();
        if versions != want {
            problems.push(format!(
                "{phase}: message {id} is at version {version} but its events are for versions \
                 {versions:?} (one per version 2..={version}, in order, is the rule)"
            ));
        } else if let Some((_, last)) = evs.last()
            && *last != status
        {
            problems.push(format!(
                "{phase}: message {id} is {status:?} but its last event says {last:?}"
            ));
        }
        match store.get(conv, *id, &bystander).await {
            Ok(v) => {
                if (v.status, v.version) != (status, version) {
                    problems.push(format!(
                        "{phase}: message {id} reads as {:?} v{} but audits as {status:?} \
                         v{version}",
                        v.status, v.version
                    ));
                }
                let body = v.body.map(|b| b.content);
                let want = (status == Status::Normal).then(|| sent.content.clone());
                if body != want {
                    problems.push(format!(
                        "{phase}: message {id} ({status:?}) shows a bystander the wrong body"
                    ));
                }
            }
            Err(e) => problems.push(format!("{phase}: message {id} cannot be read: {e}")),
        }
    }
    for (rid, o) in &log.answers {
        let Some(&(status, version)) = found.get(&o.msg_id) else {
            problems.push(format!(
                "{phase}: request {rid} was answered but its message {} is gone",
                o.msg_id
            ));
            continue;
        };
        if version < o.version {
            problems.push(format!(
                "{phase}: request {rid} was answered with version {} but {} is at v{version} \
                 ({status:?})",
                o.version, o.msg_id
            ));
        }
        let evs = events.get(&o.msg_id).cloned().unwrap_or_default();
        if o.changed && !evs.contains(&(o.version, o.status)) {
            problems.push(format!(
                "{phase}: request {rid} changed {} to {:?} v{} but no such event is in the feed",
                o.msg_id, o.status, o.version
            ));
        }
    }
    found
}

/// The fresh process's retries: every answered request must be answered again the same way (a
/// replay), and every unanswered insert and transition is sent again and must be answered.
pub(super) async fn retry_everything<S: MessageStore + ?Sized>(
    store: &S,
    log: &mut ChildLog,
    report: &mut ClientCrashReport,
) {
    for id in log.unanswered_inserts() {
        let m = log.messages[&id].clone();
        match store.insert(m).await {
            Ok(outcome) => {
                if outcome == InsertOutcome::AlreadyExists {
                    report.in_flight_had_landed += 1;
                }
                log.inserted.insert(id);
            }
            Err(e) => report
                .problems
                .push(format!("retries: the insert of {id} fails: {e}")),
        }
    }
    for (rid, sent) in &log.requests {
        let got = store.transition(sent.request.clone()).await;
        if let Some(first) = log.answers.get(rid) {
            match got {
                Ok(o)
                    if o.replayed
                        && (o.status, o.version, o.changed)
                            == (first.status, first.version, first.changed) => {}
                other => report.problems.push(format!(
                    "retries: request {rid}, first answered {first:?}, is now answered {other:?}"
                )),
            }
        } else if let Some(kind) = log.refusals.get(rid) {
            match got {
                Err(e) if e.kind().as_str() == *kind => {}
                other => report.problems.push(format!(
                    "retries: request {rid}, first refused as {kind}, is now answered {other:?}"
                )),
            }
        } else {
            match got {
                Ok(o) => {
                    if o.replayed {
                        report.in_flight_had_landed += 1;
                    }
                    log.answers.insert(rid.clone(), o);
                }
                Err(e) if is_recorded_refusal(e.kind()) => {
                    log.refusals.insert(rid.clone(), e.kind().as_str());
                }
                Err(e) => report.problems.push(format!(
                    "retries: request {rid}, in flight at the kill, fails: {e}"
                )),
            }
        }
    }
}

/// After the retention: the purge removes exactly the recalled and deleted messages, and their
/// events, and every other message still reads back.
pub(super) async fn purge_and_check<S: MessageStore + ?Sized>(
    store: &S,
    conv: &ConversationId,
    log: &ChildLog,
    found: &Found,
    report: &mut ClientCrashReport,
) {
    match store.purge_all(PurgeOptions { batch_size: 100 }).await {
        Ok(r) => {
            report.purged = r.messages;
            if r.messages != report.retired as u64 {
                report.problems.push(format!(
                    "purge: removed {} messages, but {} were recalled or deleted",
                    r.messages, report.retired
                ));
            }
        }
        Err(e) => {
            report.problems.push(format!("purge: fails: {e}"));
            return;
        }
    }
    for (id, (status, _)) in found {
        match (store.audit(conv, *id).await, status) {
            (Err(e), Status::Recalled | Status::Deleted) if e.kind() == ErrorKind::NotFound => {}
            (Ok(r), Status::Normal) if r.message.message.content == log.messages[id].content => {}
            (got, _) => report.problems.push(format!(
                "purge: message {id}, {status:?} before the purge, now audits as {:?}",
                got.map(|r| r.message.lifecycle)
            )),
        }
    }
    match store
        .drain_changes(conv, &user("auditor"), FeedCursor::START, 200)
        .await
    {
        Ok(page) => {
            for e in page.events {
                if found
                    .get(&e.msg_id)
                    .is_none_or(|(s, _)| *s != Status::Normal)
                {
                    report.problems.push(format!(
                        "purge: the feed still has an event of purged message {}",
                        e.msg_id
                    ));
                }
            }
        }
        Err(e) => report
            .problems
            .push(format!("purge: the feed cannot be read: {e}")),
    }
}
