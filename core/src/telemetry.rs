//! Tracing spans for store operations: operation, backend, conversation and msg_id, never content or keys.

use tracing::Span;

use crate::error::Operation;
use crate::ids::{ConversationId, MsgId};

/// The span every backend opens around one store operation.
///
/// Fields: `op`, `backend`, `conversation`, `msg_id` (empty when the operation has none). Content,
/// attachment keys and encryption keys are never recorded.
pub fn op_span(
    op: Operation,
    backend: &'static str,
    conversation: Option<&ConversationId>,
    msg_id: Option<MsgId>,
) -> Span {
    tracing::info_span!(
        "imstore",
        op = op.as_str(),
        backend,
        conversation = conversation.map(|c| c.as_str()),
        msg_id = msg_id.map(|m| m.get()),
    )
}

/// Runs one store operation inside its [`op_span`] and tags any error with the operation and the
/// backend: the one wrapper every backend puts around every `MessageStore` method.
pub async fn traced<T>(
    op: Operation,
    backend: &'static str,
    conversation: Option<&ConversationId>,
    msg_id: Option<MsgId>,
    work: impl std::future::Future<Output = crate::Result<T>>,
) -> crate::Result<T> {
    use tracing::Instrument;
    work.instrument(op_span(op, backend, conversation, msg_id))
        .await
        .map_err(|e| e.with_operation(op).with_backend(backend))
}
