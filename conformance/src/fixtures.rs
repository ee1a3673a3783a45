//! Small builders the cases share: the cast of a conversation, messages, requests.

use imstore_core::{
    Action, Attachment, Authority, ConversationId, MessageType, MsgId, MsgIdGenerator, NewMessage,
    RequestId, StoreSettings, TransitionRequest, UserId,
};
use std::sync::atomic::{AtomicU64, Ordering};

/// A user id from a literal known to be valid.
pub fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid user id")
}

/// A conversation id from a literal known to be valid.
pub fn conv(name: &str) -> ConversationId {
    ConversationId::new(name).expect("valid conversation id")
}

/// A fresh request id, unique within the process.
pub fn request_id() -> RequestId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    RequestId::new(format!("req-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
        .expect("valid request id")
}

/// A group chat: alice sends, bob and carol receive, mia moderates.
pub struct Cast {
    /// The conversation.
    pub conv: ConversationId,
    /// The sender.
    pub alice: UserId,
    /// A recipient.
    pub bob: UserId,
    /// Another recipient.
    pub carol: UserId,
    /// A moderator (the caller vouches with `Authority::Moderator`).
    pub mia: UserId,
    ids: MsgIdGenerator,
    settings: StoreSettings,
}

impl Cast {
    /// The cast in conversation `group-1`, generating ids from the store's clock.
    pub fn new(settings: &StoreSettings) -> Self {
        Cast::in_conversation(settings, "group-1")
    }

    /// The cast in the named conversation.
    pub fn in_conversation(settings: &StoreSettings, name: &str) -> Self {
        Cast {
            conv: conv(name),
            alice: user("alice"),
            bob: user("bob"),
            carol: user("carol"),
            mia: user("mia"),
            ids: MsgIdGenerator::new(1, settings.clock.clone()).expect("node 1"),
            settings: settings.clone(),
        }
    }

    /// A fresh msg_id.
    pub fn next_id(&self) -> MsgId {
        self.ids
            .next_id()
            .expect("the store's clock is within the msg_id time range")
    }

    /// A text message from alice with the given content.
    pub fn text(&self, content: &str) -> NewMessage {
        NewMessage::text(
            self.next_id(),
            self.conv.clone(),
            self.alice.clone(),
            content.as_bytes().to_vec(),
        )
    }

    /// A file message from alice referencing `key`.
    pub fn file(&self, key: &str) -> NewMessage {
        NewMessage {
            msg_type: MessageType::File,
            attachment: Some(Attachment {
                key: key.to_string(),
                size: 1_234_567,
                mime: "application/pdf".to_string(),
            }),
            ..self.text("report.pdf")
        }
    }

    /// A request with a fresh request id, stamped with the store's current time.
    pub fn request(&self, action: Action, requester: &UserId, msg_id: MsgId) -> TransitionRequest {
        TransitionRequest {
            action,
            requester: requester.clone(),
            authority: Authority::Member,
            conversation_id: self.conv.clone(),
            msg_id,
            client_ts: self.settings.clock.now(),
            request_id: request_id(),
        }
    }

    /// The same as [`Cast::request`] with moderator authority.
    pub fn moderator_request(
        &self,
        action: Action,
        requester: &UserId,
        msg_id: MsgId,
    ) -> TransitionRequest {
        TransitionRequest {
            authority: Authority::Moderator,
            ..self.request(action, requester, msg_id)
        }
    }
}
