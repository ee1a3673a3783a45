//! The imstore contract: what every message store promises, and the pieces every backend shares.
//!
//! * [`MessageStore`] is the one trait a backend implements; [`MessageStoreExt`] adds conveniences.
//! * [`lifecycle`] decides every transition (recall, restore, delete) from the stored state, the request
//!   and the [`Policy`], so that backends only persist what it decided.
//! * [`view`] renders a stored message for a viewer (tombstones, re-edit, restore visibility).
//! * [`codec`] compresses and encrypts content at rest.
//! * [`Store`] is the pipeline every backend goes through: validation, the codec, the replay and
//!   staleness order, rendering, spans and error tagging, once. A backend implements only
//!   [`Backend`], the part that touches its database.
//! * [`transition`] decides a request against what a backend read, request record included.
//! * [`MemoryStore`] is the complete reference implementation, and the embedded default.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
pub mod clock;
pub mod codec;
pub mod error;
pub mod ids;
pub mod lifecycle;
pub mod memory;
pub mod pipeline;
pub mod policy;
pub mod retry;
pub mod store;
pub mod telemetry;
pub mod transition;
pub mod types;
pub mod view;

pub use backend::{Backend, Connect, FeedHead, Limits};
pub use clock::{Clock, ManualClock, SystemClock};
pub use codec::{ContentCodec, EncryptionKey, KeyId, KeyRing};
pub use error::{Error, ErrorKind, Operation, Result};
pub use ids::{ConversationId, MsgId, MsgIdGenerator, RequestId, UserId};
pub use memory::{MemoryBackend, MemoryStore};
pub use pipeline::Store;
pub use policy::{Policy, PolicyBuilder, RestoreVisibility};
pub use retry::Retry;
pub use store::{MAX_SYNC_CONVERSATIONS, MessageStore, MessageStoreExt, StoreSettings};
pub use types::*;
