//! The feed check: what each device pulled against the changes the calls committed.
//!
//! A change is committed by a transition answered `changed` (first or replayed: both name the
//! same version); a call with an unknown outcome may have committed one too. Every device must
//! see each change at most once, in feed order and, per message, in increasing version; a device
//! whose last pull came back empty after every writer had finished must have seen every committed
//! change, every version from 2 to the final read's, and its last event per message must be the
//! final state.

use std::collections::{BTreeMap, HashMap};

use imstore_core::{ChangeEvent, ErrorKind, FeedCursor, MsgId, Status, Timestamp, UserId};

use super::check::{Violation, ViolationKind};
use super::{Call, Device, History, NEVER, Ret, words};

struct Applied {
    status: Status,
    by: UserId,
    at: Timestamp,
    op: usize,
}

/// The final state of a message (`None`: never stored) and the read that saw it.
type Final = (Option<(Status, u32)>, usize);

struct Seen {
    pull: usize,
    event: ChangeEvent,
}

/// Checks every device; returns the pulls and the events checked.
pub(crate) fn check(
    history: &History,
    policy: &imstore_core::Policy,
    base: Timestamp,
) -> Result<(usize, usize), Box<Violation>> {
    let mut applied: HashMap<(&str, MsgId, u32), Applied> = HashMap::new();
    let mut open: HashMap<(&str, MsgId), Vec<(&UserId, usize)>> = HashMap::new();
    let mut writers_end = 0;
    for (i, op) in history.ops.iter().enumerate() {
        let Call::Transition(r) = &op.call else {
            continue;
        };
        let conv = r.conversation_id.as_str();
        if op.end != NEVER {
            writers_end = writers_end.max(op.end);
        }
        match &op.ret {
            Ret::Transitioned(o) if o.changed && !o.replayed => {
                applied
                    .entry((conv, r.msg_id, o.version))
                    .or_insert(Applied {
                        status: o.status,
                        by: r.requester.clone(),
                        at: op.now,
                        op: i,
                    });
            }
            ret if ret.is_indeterminate() => {
                open.entry((conv, r.msg_id))
                    .or_default()
                    .push((&r.requester, i));
            }
            _ => {}
        }
    }
    let mut finals: BTreeMap<(&str, MsgId), Final> = BTreeMap::new();
    for &i in &history.final_reads {
        let op = &history.ops[i];
        let key = (op.call.conversation_id().as_str(), op.call.msg_id());
        match &op.ret {
            Ret::Read(v) => {
                finals.insert(key, (Some((v.status, v.version)), i));
            }
            Ret::Failed(ErrorKind::NotFound) => {
                finals.insert(key, (None, i));
            }
            _ => {}
        }
    }

    let (mut pulls, mut events) = (0, 0);
    for device in &history.devices {
        let conv = device.conversation_id.as_str();
        let fail = |text: String, ops: Vec<usize>, messages: Vec<MsgId>| {
            Box::new(Violation {
                kind: ViolationKind::Feed,
                conversation: Some(device.conversation_id.clone()),
                messages,
                ops,
                context: Vec::new(),
                text: format!("{}: feed of {}: {text}", history.backend, device.name),
            })
        };
        let mut expected: Option<FeedCursor> = None;
        let mut seen: HashMap<(MsgId, u32), Seen> = HashMap::new();
        let mut last: HashMap<MsgId, Seen> = HashMap::new();
        for (k, pull) in device.pulls.iter().enumerate() {
            pulls += 1;
            if let Some(c) = expected
                && pull.cursor != c
            {
                return Err(fail(
                    format!(
                        "pull {k} started from cursor {} instead of {}, the cursor the previous \
                         page returned",
                        pull.cursor.position(),
                        c.position()
                    ),
                    Vec::new(),
                    Vec::new(),
                ));
            }
            let Ok(page) = &pull.result else {
                continue;
            };
            let pull_words = |k: usize| {
                let p = &device.pulls[k];
                format!(
                    "pull {k} (ticks {}..{}, from cursor {}, limit {})",
                    p.start,
                    p.end,
                    p.cursor.position(),
                    p.limit
                )
            };
            if page.events.len() > pull.limit as usize {
                return Err(fail(
                    format!("{} returned {} events", pull_words(k), page.events.len()),
                    Vec::new(),
                    Vec::new(),
                ));
            }
            let mut prev = pull.cursor.position();
            for e in &page.events {
                events += 1;
                let ev = event(e, base);
                if e.conversation_id != device.conversation_id {
                    return Err(fail(
                        format!(
                            "{} delivered an event of another conversation: {ev}",
                            pull_words(k)
                        ),
                        Vec::new(),
                        vec![e.msg_id],
                    ));
                }
                if e.seq <= prev {
                    return Err(fail(
                        format!(
                            "{} delivered {ev} after feed position {prev}: out of feed order",
                            pull_words(k)
                        ),
                        Vec::new(),
                        vec![e.msg_id],
                    ));
                }
                prev = e.seq;
                if let Some(first) = seen.get(&(e.msg_id, e.version)) {
                    return Err(fail(
                        format!(
                            "the change to version {} of {} was delivered twice: {} in {}, and \
                             {ev} in {}",
                            e.version,
                            e.msg_id,
                            event(&first.event, base),
                            pull_words(first.pull),
                            pull_words(k)
                        ),
                        applied_op(&applied, conv, e),
                        vec![e.msg_id],
                    ));
                }
                if let Some(before) = last.get(&e.msg_id)
                    && before.event.version >= e.version
                {
                    return Err(fail(
                        format!(
                            "{} of {} came after {} ({}): versions out of order",
                            ev,
                            pull_words(k),
                            event(&before.event, base),
                            pull_words(before.pull)
                        ),
                        Vec::new(),
                        vec![e.msg_id],
                    ));
                }
                match applied.get(&(conv, e.msg_id, e.version)) {
                    Some(a)
                        if seen_as(a.status, &a.by, &device.viewer, policy) != e.status
                            || a.by != e.by
                            || a.at != e.at =>
                    {
                        return Err(fail(
                            format!(
                                "{} delivered {ev}, but the change to that version was made by \
                                 {}",
                                pull_words(k),
                                words::op(a.op, &history.ops[a.op], base)
                            ),
                            vec![a.op],
                            vec![e.msg_id],
                        ));
                    }
                    Some(_) => {}
                    None => {
                        let maybe = open
                            .get(&(conv, e.msg_id))
                            .is_some_and(|v| v.iter().any(|(who, _)| **who == e.by));
                        if !maybe {
                            return Err(fail(
                                format!(
                                    "{} delivered {ev}, a change no call made (no call by {} on \
                                     {} answered version {} changed, and none has an unknown \
                                     outcome)",
                                    pull_words(k),
                                    e.by,
                                    e.msg_id,
                                    e.version
                                ),
                                Vec::new(),
                                vec![e.msg_id],
                            ));
                        }
                    }
                }
                seen.insert(
                    (e.msg_id, e.version),
                    Seen {
                        pull: k,
                        event: e.clone(),
                    },
                );
                last.insert(
                    e.msg_id,
                    Seen {
                        pull: k,
                        event: e.clone(),
                    },
                );
            }
            let next = match page.events.last() {
                Some(e) => FeedCursor::at(&device.conversation_id, e.seq).ok(),
                None => Some(pull.cursor),
            };
            if Some(page.next) != next {
                return Err(fail(
                    format!(
                        "{} returned next cursor {:?}, not {:?} (its last event's position, in \
                         this conversation)",
                        pull_words(k),
                        page.next,
                        next
                    ),
                    Vec::new(),
                    Vec::new(),
                ));
            }
            expected = Some(page.next);
        }
        if !caught_up(device, writers_end) {
            continue;
        }
        let mut missing: Vec<(&(&str, MsgId, u32), &Applied)> = applied
            .iter()
            .filter(|((c, m, v), _)| *c == conv && !seen.contains_key(&(*m, *v)))
            .collect();
        missing.sort_by_key(|(_, a)| a.op);
        if let Some(((_, m, v), a)) = missing.first() {
            return Err(fail(
                format!(
                    "after every writer had finished and the device had drained its feed, the \
                     change to version {v} of {m} was never delivered (it skipped the event); \
                     the change was made by {}{}",
                    words::op(a.op, &history.ops[a.op], base),
                    delivered(&seen, *m, base)
                ),
                vec![a.op],
                vec![*m],
            ));
        }
        for (&(c, m), &(state, read)) in &finals {
            if c != conv {
                continue;
            }
            let final_words = words::op(read, &history.ops[read], base);
            let top = state.map_or(1, |(_, v)| v);
            if let Some(v) = (2..=top).find(|v| !seen.contains_key(&(m, *v))) {
                return Err(fail(
                    format!(
                        "the final read says {m} is at version {top}, but the device, drained \
                         after every writer had finished, never got version {v} (a skipped \
                         event). Final read: {final_words}{}",
                        delivered(&seen, m, base)
                    ),
                    vec![read],
                    vec![m],
                ));
            }
            // The final read is the sender's, who sees the stored status; the device's viewer
            // sees it as the feed renders it (a restore is the restorer's, that is the sender's).
            let sender = match &history.ops[read].call {
                Call::Get { viewer, .. } => viewer.clone(),
                _ => device.viewer.clone(),
            };
            match (state, last.get(&m)) {
                (Some((status, version)), Some(l))
                    if (l.event.status, l.event.version)
                        != (seen_as(status, &sender, &device.viewer, policy), version) =>
                {
                    return Err(fail(
                        format!(
                            "the last event of {m} is {}, but the final state is {} v{version}. \
                             Final read: {final_words}",
                            event(&l.event, base),
                            words::status(status)
                        ),
                        vec![read],
                        vec![m],
                    ));
                }
                (None, Some(l)) => {
                    return Err(fail(
                        format!(
                            "{m} was never stored, yet the device got {}",
                            event(&l.event, base)
                        ),
                        vec![read],
                        vec![m],
                    ));
                }
                _ => {}
            }
        }
    }
    Ok((pulls, events))
}

/// True when the device's last pull succeeded empty and began after every writer had returned.
/// The status a device of `viewer` learns for a change to `status` made by `by` (the core's own
/// rendering of events, so the checker and the stores cannot drift apart).
fn seen_as(status: Status, by: &UserId, viewer: &UserId, policy: &imstore_core::Policy) -> Status {
    let probe = ChangeEvent {
        seq: 0,
        conversation_id: imstore_core::ConversationId::new("probe").expect("valid id"),
        msg_id: imstore_core::MsgId::new(1).expect("valid id"),
        status,
        version: 0,
        at: Timestamp::default(),
        by: by.clone(),
    };
    imstore_core::view::event_for(probe, viewer, policy).status
}

fn caught_up(device: &Device, writers_end: u64) -> bool {
    device.pulls.last().is_some_and(|p| {
        p.start > writers_end && p.result.as_ref().is_ok_and(|page| page.events.is_empty())
    })
}

fn applied_op(
    applied: &HashMap<(&str, MsgId, u32), Applied>,
    conv: &str,
    e: &ChangeEvent,
) -> Vec<usize> {
    applied
        .get(&(conv, e.msg_id, e.version))
        .map(|a| vec![a.op])
        .unwrap_or_default()
}

fn delivered(seen: &HashMap<(MsgId, u32), Seen>, m: MsgId, base: Timestamp) -> String {
    let mut got: Vec<&Seen> = seen.values().filter(|s| s.event.msg_id == m).collect();
    got.sort_by_key(|s| s.event.seq);
    if got.is_empty() {
        return format!(". The device got no event of {m}.");
    }
    let list: Vec<String> = got
        .iter()
        .map(|s| format!("{} in pull {}", event(&s.event, base), s.pull))
        .collect();
    format!(". The device got, of {m}: {}.", list.join("; "))
}

fn event(e: &ChangeEvent, base: Timestamp) -> String {
    format!(
        "event {} ({} {} v{} by {} at {})",
        e.seq,
        e.msg_id,
        words::status(e.status),
        e.version,
        e.by,
        words::rel(e.at, base)
    )
}
