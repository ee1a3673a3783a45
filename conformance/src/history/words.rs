//! Ops, answers and states in words, for the reports.

use imstore_core::{Authority, InsertOutcome, Status, Timestamp};

use super::model::Msg;
use super::{Call, NEVER, Op, Ret};

pub(crate) fn status(s: Status) -> &'static str {
    match s {
        Status::Normal => "normal",
        Status::Recalled => "recalled",
        Status::Deleted => "deleted",
    }
}

fn short(id: &str) -> String {
    if id.len() <= 48 {
        id.to_string()
    } else {
        let cut = (0..=40)
            .rev()
            .find(|i| id.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}... ({} bytes)", &id[..cut], id.len())
    }
}

/// What was asked, e.g. "recall of 123 by mia (moderator), request r5".
pub(crate) fn call(call: &Call, now: Timestamp) -> String {
    match call {
        Call::Insert(m) => format!(
            "insert of {} from {} ({:?})",
            m.msg_id,
            m.sender_id,
            String::from_utf8_lossy(&m.content)
        ),
        Call::Transition(r) => {
            let who = match r.authority {
                Authority::Member => "member",
                Authority::Moderator => "moderator",
            };
            let skew = r.client_ts.as_millis() - now.as_millis();
            let clock = if skew == 0 {
                String::new()
            } else {
                format!(", client clock {skew:+} ms off")
            };
            format!(
                "{} of {} by {} ({who}), request {}{clock}",
                r.action.as_str(),
                r.msg_id,
                r.requester,
                short(r.request_id.as_str())
            )
        }
        Call::Get { msg_id, viewer, .. } => format!("get of {msg_id} as {viewer}"),
    }
}

/// What came back, e.g. "recalled v3, changed".
pub(crate) fn ret(ret: &Ret, base: Timestamp) -> String {
    match ret {
        Ret::Inserted(InsertOutcome::Inserted) => "inserted".into(),
        Ret::Inserted(InsertOutcome::AlreadyExists) => "already exists".into(),
        Ret::Transitioned(o) => format!(
            "{} v{}, {}{}",
            status(o.status),
            o.version,
            if o.changed { "changed" } else { "unchanged" },
            if o.replayed { ", replayed" } else { "" }
        ),
        Ret::Read(v) => {
            let notice = v.tombstone.as_ref().map_or(String::new(), |t| {
                format!(
                    ", notice {} by {} at {}",
                    status(t.status),
                    t.by,
                    rel(t.at, base)
                )
            });
            format!(
                "reads {} v{}{notice}, {}",
                status(v.status),
                v.version,
                if v.body.is_some() {
                    "with content"
                } else {
                    "no content"
                }
            )
        }
        Ret::Failed(k) if ret.is_indeterminate() => format!("{k} (outcome unknown)"),
        Ret::Failed(k) => format!("error {k}"),
    }
}

/// One op on one line: its number, client, interval, store time, call and answer.
pub(crate) fn op(index: usize, op: &Op, base: Timestamp) -> String {
    let end = if op.end == NEVER {
        "never returned".to_string()
    } else {
        op.end.to_string()
    };
    format!(
        "#{index} client {}, ticks {}..{end}, store time {}: {} -> {}",
        op.client,
        op.start,
        rel(op.now, base),
        call(&op.call, op.now),
        ret(&op.ret, base)
    )
}

/// A message's state in the model.
pub(crate) fn state(m: &Option<Msg>, base: Timestamp) -> String {
    let Some(m) = m else {
        return "not inserted".into();
    };
    let l = &m.life;
    let mut s = format!("{} v{}", status(l.status), l.version);
    if let (Some(by), Some(at)) = (&l.recalled_by, l.recalled_at) {
        s.push_str(&format!(", recalled by {by} at {}", rel(at, base)));
    }
    if let Some(at) = l.restored_at {
        s.push_str(&format!(", restored at {}", rel(at, base)));
    }
    if let Some(by) = &l.deleted_by {
        s.push_str(&format!(", deleted by {by}"));
    }
    s
}

/// A store time relative to the history's first, e.g. "+121000 ms".
pub(crate) fn rel(t: Timestamp, base: Timestamp) -> String {
    format!("{:+} ms", t.as_millis() - base.as_millis())
}
