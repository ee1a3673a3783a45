//! Every case of the suite, one module per section of `CONTRACT.md`. Each case is a `pub async fn`
//! whose first doc line is the behaviour it checks.

#![allow(clippy::missing_panics_doc)]

pub(crate) use imstore_core::*;

pub(crate) use crate::fixtures::*;
pub(crate) use crate::harness::{Harness, Setup, StoreFactory};

pub mod at_rest;
pub mod input;
pub mod message;
pub mod purge;
pub mod races;
pub mod reading;
pub mod sync;
pub mod transitions;

pub use at_rest::*;
pub use input::*;
pub use message::*;
pub use purge::*;
pub use races::*;
pub use reading::*;
pub use sync::*;
pub use transitions::*;

#[doc(hidden)]
#[macro_export]
macro_rules! __with_cases {
    ([$($callback:tt)*] $($args:tt)*) => {
        $($callback)*!{$($args)*
            insert_then_get_returns_the_message,
            insert_same_message_twice_is_a_successful_retry,
            insert_conflicting_duplicate_is_a_conflict_and_keeps_the_original,
            concurrent_inserts_of_one_message_store_it_once,
            insert_batch_stores_every_message,
            insert_batch_retry_is_idempotent,
            insert_batch_with_a_conflict_stores_the_rest,
            insert_batch_repeating_a_msg_id,
            insert_batch_with_invalid_input_stores_nothing,
            get_missing_message_is_not_found,
            message_types_and_attachments_round_trip,
            binary_and_empty_content_round_trip,
            late_insert_of_a_purged_message_is_refused,
            insert_horizon_follows_retention_history_limit_and_skew,
            insert_minted_ahead_of_the_skew_is_refused,
            list_newest_first_pages_through_everything_once,
            list_oldest_first_pages_through_everything_once,
            list_cursor_is_exclusive_and_the_last_page_has_no_next,
            list_of_an_empty_conversation_is_an_empty_page,
            list_page_size_zero_or_huge_is_invalid_input,
            list_is_isolated_per_conversation,
            list_spans_messages_sent_months_apart,
            sender_recalls_within_the_window,
            sender_recall_after_the_window_is_window_expired,
            configured_recall_window_is_honoured,
            non_sender_member_may_not_recall_or_delete,
            moderator_recalls_after_the_senders_window,
            moderator_recall_window_is_enforced_when_configured,
            sender_restores_within_the_restore_window,
            restore_after_the_window_is_window_expired,
            only_the_sender_may_restore,
            sender_cannot_restore_a_moderators_recall,
            restore_of_a_normal_message_is_invalid_state,
            deleted_is_terminal,
            sender_and_moderator_may_delete,
            stale_client_timestamp_is_refused,
            replayed_recall_after_restore_is_not_applied_again,
            replayed_no_op_recall_after_restore_is_not_applied,
            reused_request_id_for_another_request_is_a_conflict,
            transition_of_a_missing_message_is_not_found,
            refused_restore_replayed_after_a_recall_is_refused_again,
            retry_of_an_applied_recall_after_the_skew_window_is_replayed,
            stale_refusal_is_the_first_outcome_of_its_request_id,
            not_found_refusal_is_the_first_outcome_of_its_request_id,
            refused_request_ids_are_taken,
            moderator_recall_takes_over_the_senders_recall,
            sender_recall_after_a_moderators_recall_changes_nothing,
            repeated_recall_succeeds_twice_with_one_event,
            repeated_restore_and_delete_are_applied_once,
            recall_from_two_devices_changes_the_message_once,
            concurrent_recalls_make_exactly_one_transition,
            concurrent_sends_into_one_conversation_store_each_message_once,
            a_storm_of_changes_in_one_conversation_applies_each_once,
            concurrent_retries_of_one_request_apply_it_once,
            concurrent_reuse_of_a_request_id_applies_one_request,
            recall_racing_restore_ends_consistent,
            recall_racing_delete_ends_consistent,
            moderator_recall_racing_the_senders_restore_ends_recalled,
            retries_in_flight_of_a_no_op_all_get_the_recorded_answer,
            conflict_on_a_reused_id_follows_the_winners_effect,
            read_after_feed_sees_the_change,
            recipients_see_a_recall_tombstone_without_content,
            sender_sees_recalled_content_only_while_restorable,
            deleted_message_never_shows_content,
            restored_message_reappears_for_everyone_by_default,
            restored_message_sender_only_visibility,
            list_shows_tombstones_in_place,
            audit_returns_content_of_recalled_and_deleted_messages,
            attachment_access_follows_visibility,
            every_status_change_appends_one_event,
            refused_requests_append_no_event,
            changes_since_pages_and_resumes_from_its_cursor,
            change_feeds_are_per_conversation,
            offline_device_converges_by_applying_pulled_events,
            polling_reader_sees_every_concurrent_change_exactly_once,
            group_recall_costs_one_event_whatever_the_group_size,
            feed_agrees_with_get_for_every_viewer,
            changed_conversations_names_exactly_the_changed_ones,
            a_cursor_from_another_conversation_is_refused,
            a_device_offline_across_a_purge_is_told_to_resync,
            a_resync_moves_the_cursor_to_the_mark,
            purge_removes_only_expired_recalled_and_deleted_messages,
            purge_removes_the_events_of_purged_messages,
            purge_skips_conversations_under_legal_hold,
            purge_reports_released_attachment_keys,
            a_forwarded_attachment_is_released_with_its_last_message,
            purge_runs_in_bounded_resumable_batches,
            concurrent_purges_never_double_count,
            purge_applies_the_history_limit,
            transitions_on_purged_messages_are_not_found,
            purge_racing_inserts_loses_no_acknowledged_message,
            purge_racing_reads_never_shows_a_torn_message,
            legal_hold_placed_during_a_purge_is_honoured,
            page_walk_over_partly_purged_history_visits_every_remaining_message,
            history_purge_racing_deletes_leaves_no_orphan_events,
            encrypted_content_leaves_no_plaintext_at_rest,
            tampered_stored_content_is_a_decode_error,
            ciphertext_swapped_between_messages_fails_to_decode,
            key_rotation_keeps_old_messages_readable,
            large_content_is_compressed_at_rest,
            an_undecodable_row_is_marked_in_its_page_not_fatal,
            rekey_moves_every_message_to_the_active_key,
            rekey_seals_a_plaintext_store_when_encryption_is_turned_on,
            forged_plaintext_in_an_encrypting_store_is_a_decode_error,
            every_bit_flip_and_truncation_of_stored_content_is_a_decode_error,
            rekey_racing_transitions_and_inserts_changes_nothing_else,
            oversized_content_is_invalid_input,
            oversized_ids_are_invalid_input,
            malformed_ids_are_refused_before_reaching_the_store,
            injection_looking_strings_are_stored_verbatim,
            attachment_with_an_empty_key_is_invalid_input,
            errors_name_their_operation_and_backend,
            the_largest_msg_id_is_stored_and_listed,
            extreme_client_timestamps_are_stale_requests,
            feed_cursor_beyond_the_head_is_invalid_input,
            oversized_ids_on_reads_are_invalid_input,
            a_content_limit_the_store_cannot_keep_is_refused_when_built,
            a_decompression_bomb_is_a_decode_error,
        }
    };
}

pub(crate) fn kind<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    r.expect_err("expected an error").kind()
}

pub(crate) async fn start<F: StoreFactory>(f: &F) -> (Harness<'_, F>, Cast) {
    start_with(f, Setup::default()).await
}

pub(crate) async fn start_with<F: StoreFactory>(f: &F, setup: Setup) -> (Harness<'_, F>, Cast) {
    let h = Harness::start(f, setup).await;
    let c = Cast::new(&h.settings);
    (h, c)
}

pub(crate) async fn sent<F: StoreFactory>(h: &Harness<'_, F>, m: NewMessage) -> MsgId {
    let id = m.msg_id;
    assert_eq!(h.store.insert(m).await.unwrap(), InsertOutcome::Inserted);
    id
}

pub(crate) async fn all_events<F: StoreFactory>(
    h: &Harness<'_, F>,
    c: &ConversationId,
) -> Vec<ChangeEvent> {
    h.store
        .drain_changes(c, &user("bob"), FeedCursor::START, 100)
        .await
        .unwrap()
        .events
}

pub(crate) fn sealed_codec(id: u32, key: [u8; 32]) -> ContentCodec {
    ContentCodec::default().with_encryption(KeyRing::new(EncryptionKey::new(KeyId(id), key)))
}

pub(crate) const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);
pub(crate) const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);
