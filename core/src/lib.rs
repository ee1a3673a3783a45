//! The imstore contract: what every message store promises, and the pieces every backend shares.
//!
//! * [`MessageStore`] is the one trait a backend implements; [`MessageStoreExt`] adds conveniences.
//! * [`lifecycle`] decides every transition (recall, restore, delete) from the stored state, the request
//!   and the [`Policy`], so that backends only persist what it decided.
//! * [`view`] renders a stored message for a viewer (tombstones, re-edit, restore visibility).
//! * [`codec`] compresses and encrypts content at rest.
//! * [`MemoryStore`] is the complete reference implementation, and the embedded default.

pub mod clock;
pub mod codec;
pub mod error;
pub mod ids;
pub mod lifecycle;
pub mod memory;
pub mod policy;
pub mod store;
pub mod telemetry;
pub mod types;
pub mod view;

pub use clock::{Clock, ManualClock, SystemClock};
pub use codec::{ContentCodec, EncryptionKey, KeyId, KeyRing};
pub use error::{Error, ErrorKind, Operation, Result};
pub use ids::{ConversationId, MsgId, MsgIdGenerator, RequestId, UserId};
pub use memory::MemoryStore;
pub use policy::{Policy, PolicyBuilder, RestoreVisibility};
pub use store::{MessageStore, MessageStoreExt, StoreSettings};
pub use types::*;
