//! How a stored message reads to one viewer: tombstones, the sender's re-edit, restore visibility.

use crate::ids::UserId;
use crate::lifecycle::restorable;
use crate::policy::{Policy, RestoreVisibility};
use crate::types::{
    AttachmentAccess, Body, Lifecycle, MessageView, Status, StoredMessage, Timestamp, Tombstone,
};

/// What `viewer` sees of a message: the status, the notice, and whether content is shown.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Visibility {
    /// The status as this viewer sees it.
    pub status: Status,
    /// The notice shown in place of (or, for the sender's re-edit, beside) the content.
    pub tombstone: Option<Tombstone>,
    /// True when the viewer may see the content and download the attachment.
    pub shows_content: bool,
}

/// What `viewer` sees of a message sent by `sender` in state `state` at `now`.
///
/// A backend calls this before decoding content, and decodes only when `shows_content`.
pub fn visibility(
    sender: &UserId,
    state: &Lifecycle,
    viewer: &UserId,
    policy: &Policy,
    now: Timestamp,
) -> Visibility {
    let is_sender = viewer == sender;
    match state.status {
        Status::Normal => {
            let hidden_restore = policy.restore_visibility() == RestoreVisibility::SenderOnly
                && !is_sender
                && state.restored_at.is_some();
            match (hidden_restore, &state.recalled_by, state.restored_at) {
                (true, Some(by), Some(at)) => Visibility {
                    status: Status::Recalled,
                    tombstone: Some(Tombstone {
                        status: Status::Recalled,
                        by: by.clone(),
                        at,
                    }),
                    shows_content: false,
                },
                _ => Visibility {
                    status: Status::Normal,
                    tombstone: None,
                    shows_content: true,
                },
            }
        }
        Status::Recalled => Visibility {
            status: Status::Recalled,
            tombstone: Some(Tombstone {
                status: Status::Recalled,
                by: state.recalled_by.clone().unwrap_or_else(|| sender.clone()),
                at: state.recalled_at.unwrap_or(state.created_at),
            }),
            shows_content: is_sender && restorable(sender, state, policy, now),
        },
        Status::Deleted => Visibility {
            status: Status::Deleted,
            tombstone: Some(Tombstone {
                status: Status::Deleted,
                by: state.deleted_by.clone().unwrap_or_else(|| sender.clone()),
                at: state.deleted_at.unwrap_or(state.created_at),
            }),
            shows_content: false,
        },
    }
}

/// The view of `stored` for `viewer`; the content is moved into the view only when shown.
pub fn render(
    stored: StoredMessage,
    viewer: &UserId,
    policy: &Policy,
    now: Timestamp,
) -> MessageView {
    let vis = visibility(
        &stored.message.sender_id,
        &stored.lifecycle,
        viewer,
        policy,
        now,
    );
    let m = stored.message;
    MessageView {
        msg_id: m.msg_id,
        conversation_id: m.conversation_id,
        sender_id: m.sender_id,
        msg_type: m.msg_type,
        created_at: stored.lifecycle.created_at,
        status: vis.status,
        version: stored.lifecycle.version,
        tombstone: vis.tombstone,
        body: vis.shows_content.then_some(Body {
            content: m.content,
            attachment: m.attachment,
        }),
        undecodable: false,
    }
}

/// The view of `stored`, whose content is still as the codec stored it: the content is decoded
/// only when `viewer` may see it, so tombstones never pay for (or fail on) decoding.
pub fn render_encoded(
    mut stored: StoredMessage,
    viewer: &UserId,
    policy: &Policy,
    codec: &crate::codec::ContentCodec,
    now: Timestamp,
) -> crate::Result<MessageView> {
    let m = &stored.message;
    stored.message.content =
        if visibility(&m.sender_id, &stored.lifecycle, viewer, policy, now).shows_content {
            codec.decode(&m.conversation_id, m.msg_id, &m.content)?
        } else {
            Vec::new()
        };
    Ok(render(stored, viewer, policy, now))
}

/// Like [`render_encoded`], but content that fails to decode yields the view without its body,
/// marked [`MessageView::undecodable`], instead of an error (for pages: one bad row must not make
/// a conversation unreadable). Other errors are returned.
pub fn render_encoded_or_mark(
    mut stored: StoredMessage,
    viewer: &UserId,
    policy: &Policy,
    codec: &crate::codec::ContentCodec,
    now: Timestamp,
) -> crate::Result<MessageView> {
    let m = &stored.message;
    if !visibility(&m.sender_id, &stored.lifecycle, viewer, policy, now).shows_content {
        stored.message.content = Vec::new();
        return Ok(render(stored, viewer, policy, now));
    }
    match codec.decode(&m.conversation_id, m.msg_id, &m.content) {
        Ok(content) => {
            stored.message.content = content;
            Ok(render(stored, viewer, policy, now))
        }
        Err(e) if e.kind() == crate::ErrorKind::Decode => {
            stored.message.content = Vec::new();
            let mut v = render(stored, viewer, policy, now);
            v.body = None;
            v.undecodable = true;
            Ok(v)
        }
        Err(e) => Err(e),
    }
}

/// A change event as `viewer`'s device sees it, agreeing with what `get` shows that viewer.
///
/// The feed is one per conversation, but a restore that the policy shows only to the sender is,
/// to everyone else, still the recall: their devices learn status `Recalled` at the restore's
/// version, exactly what `get` shows them. Every other event reads the same to every viewer.
pub fn event_for(
    mut event: crate::types::ChangeEvent,
    viewer: &UserId,
    policy: &Policy,
) -> crate::types::ChangeEvent {
    // Only a restore produces a `Normal` event, and only the sender restores.
    if event.status == Status::Normal
        && policy.restore_visibility() == RestoreVisibility::SenderOnly
        && viewer != &event.by
    {
        event.status = Status::Recalled;
    }
    event
}

/// Whether `viewer` may download the attachment of `stored`: only while they may see its content.
/// The file itself is never released here; only the purge releases it.
pub fn attachment_access(
    stored: &StoredMessage,
    viewer: &UserId,
    policy: &Policy,
    now: Timestamp,
) -> AttachmentAccess {
    let Some(att) = &stored.message.attachment else {
        return AttachmentAccess::NoAttachment;
    };
    let vis = visibility(
        &stored.message.sender_id,
        &stored.lifecycle,
        viewer,
        policy,
        now,
    );
    if vis.shows_content {
        AttachmentAccess::Allowed {
            key: att.key.clone(),
        }
    } else {
        AttachmentAccess::Denied { status: vis.status }
    }
}
