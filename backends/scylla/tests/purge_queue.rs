//! The sharded purge queue on the running Cassandra: each shard-day is read from its progress
//! mark, so the entries a purge removed are never read again (100,001 removed entries in front
//! of the mark, more than the server's `tombstone_failure_threshold`, do not slow or stop the
//! next call); a day whose every shard is done is dropped whole; and a held conversation's
//! entries are parked, so they do not pin the mark, and come back when the hold is lifted.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use imstore_conformance::fixtures::Cast;
use imstore_conformance::{Harness, Setup};
use imstore_core::{Action, Clock, MessageStore, MessageStoreExt, MsgId, PurgeOptions, Timestamp};
use imstore_scylla::testing::ScyllaFactory;
use scylla::statement::batch::{Batch, BatchType};

const DAY_MS: i64 = 86_400_000;
/// The queue's mark lag (`index::MARK_LAG_MS`) and a minute more.
const PAST_LAG: Duration = Duration::from_secs(16 * 60);
/// `retention_queue`'s code in `purge_days` and `purge_progress`.
const RETENTION: i32 = 2;

async fn rows<T>(
    h: &Harness<'_, ScyllaFactory>,
    cql: String,
    values: impl scylla::serialize::row::SerializeRow,
) -> Vec<T>
where
    T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    h.store
        .inner()
        .session()
        .query_unpaged(cql, values)
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<T>()
        .unwrap()
        .collect::<Result<Vec<T>, _>>()
        .unwrap()
}

/// The `(shard, due, msg_id)` of every retention entry of `day`.
async fn entries(h: &Harness<'_, ScyllaFactory>, day: i32) -> Vec<(i32, i64, i64)> {
    let mut all = Vec::new();
    for shard in 0..32 {
        all.extend(
            rows::<(i32, i64, i64)>(
                h,
                format!(
                    "SELECT shard, due, msg_id FROM {}.retention_queue WHERE day = ? AND shard = ?",
                    h.namespace()
                ),
                (day, shard),
            )
            .await,
        );
    }
    all
}

/// The progress marks of `day`'s retention shards.
async fn marks(h: &Harness<'_, ScyllaFactory>, day: i32) -> Vec<(i32, i64)> {
    rows::<(i32, i64)>(
        h,
        format!(
            "SELECT shard, through FROM {}.purge_progress WHERE queue = ? AND day = ?",
            h.namespace()
        ),
        (RETENTION, day),
    )
    .await
}

/// Sets the clock so that a recall now is due at `hour`:00 of a day to come; returns that day.
fn due_at_hour(h: &Harness<'_, ScyllaFactory>, hour: i64) -> i32 {
    let retention = i64::try_from(h.settings.policy.retention().as_millis()).unwrap();
    let day = (h.clock.now().as_millis() + retention).div_euclid(DAY_MS) + 1;
    h.clock.set(Timestamp::from_millis(
        day * DAY_MS + hour * 3_600_000 - retention,
    ));
    i32::try_from(day).unwrap()
}

async fn recalled(h: &Harness<'_, ScyllaFactory>, c: &Cast, text: &str) -> (MsgId, Timestamp) {
    let m = c.text(text);
    h.store.insert(m.clone()).await.unwrap();
    h.store
        .transition(c.request(Action::Recall, &c.alice, m.msg_id))
        .await
        .unwrap();
    (
        m.msg_id,
        h.clock.now().saturating_add(h.settings.policy.retention()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_entries_in_front_of_the_mark_are_never_read_again() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let day = due_at_hour(&h, 6);
    let (_, first_due) = recalled(&h, &c, "first").await;
    h.clock.advance(Duration::from_secs(2 * 3600));
    let (second, second_due) = recalled(&h, &c, "second").await;

    // The first call removes the first message and moves its shard's mark past it.
    h.clock.set(first_due.saturating_add(PAST_LAG));
    let report = h.store.purge_all(PurgeOptions::default()).await.unwrap();
    assert_eq!(report.messages, 1);
    let left = entries(&h, day).await;
    assert_eq!(
        left.iter().map(|e| e.2).collect::<Vec<_>>(),
        vec![second.as_i64()]
    );
    let shard = left[0].0;
    let mark = marks(&h, day)
        .await
        .into_iter()
        .find(|(s, _)| *s == shard)
        .expect("the shard's mark")
        .1;
    assert!(mark > first_due.as_millis(), "mark {mark}");
    assert!(mark <= second_due.as_millis(), "mark {mark}");

    // What removing 100,001 more entries due before the first one leaves in that shard-day.
    let threshold = 100_000;
    let session = h.store.inner().session();
    let delete = session
        .prepare(format!(
            "DELETE FROM {}.retention_queue WHERE day = ? AND shard = ? AND due = ? AND conversation_id = ? AND msg_id = 1 AND request_id = ''",
            h.namespace()
        ))
        .await
        .unwrap();
    let dues: Vec<i64> = (first_due.as_millis() - threshold - 1..first_due.as_millis()).collect();
    let started = Instant::now();
    stream::iter(dues.chunks(500).map(<[i64]>::to_vec))
        .map(|chunk| {
            let (delete, conv) = (delete.clone(), c.conv.as_str());
            async move {
                let mut batch = Batch::new(BatchType::Unlogged);
                let mut values = Vec::new();
                for due in chunk {
                    batch.append_statement(delete.clone());
                    values.push((day, shard, due, conv));
                }
                session.batch(&batch, values).await.map(|_| ())
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    eprintln!("{} queue tombstones in {:?}", dues.len(), started.elapsed());

    // The next call reads the shard-day from the mark: the second message goes.
    h.clock.set(second_due.saturating_add(PAST_LAG));
    let started = Instant::now();
    let report = h
        .store
        .purge_all(PurgeOptions::default())
        .await
        .expect("the purge reads from the mark, past no removed entry");
    eprintln!("purge over the marked day in {:?}", started.elapsed());
    assert_eq!(report.messages, 1);

    // Once the mark of every shard passed the day's end (plus the lag), the day goes whole.
    h.clock
        .set(Timestamp::from_millis((i64::from(day) + 1) * DAY_MS).saturating_add(PAST_LAG));
    h.store.purge_all(PurgeOptions::default()).await.unwrap();
    assert!(entries(&h, day).await.is_empty());
    assert!(
        marks(&h, day).await.is_empty(),
        "the day's marks are dropped"
    );
    let days = rows::<(i32,)>(
        &h,
        format!(
            "SELECT day FROM {}.purge_days WHERE shard = ? AND day = ?",
            h.namespace()
        ),
        (RETENTION, day),
    )
    .await;
    assert!(days.is_empty(), "the day is forgotten");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_backlog_is_parked_off_the_queue_and_returns_when_the_hold_is_lifted() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let day = due_at_hour(&h, 6);
    h.store.set_legal_hold(&c.conv, true).await.unwrap();
    let (held, due) = recalled(&h, &c, "evidence").await;
    h.clock.set(due.saturating_add(PAST_LAG));
    assert_eq!(
        h.store
            .purge_all(PurgeOptions::default())
            .await
            .unwrap()
            .messages,
        0
    );
    // Off the queue, and the mark of its shard went past it; parked under the conversation.
    assert!(entries(&h, day).await.is_empty());
    assert!(
        marks(&h, day)
            .await
            .iter()
            .all(|(_, m)| *m > due.as_millis()),
        "the hold pins no mark"
    );
    let parked = rows::<(i64,)>(
        &h,
        format!(
            "SELECT msg_id FROM {}.held_entries WHERE conversation_id = ?",
            h.namespace()
        ),
        (c.conv.as_str(),),
    )
    .await;
    assert_eq!(parked, vec![(held.as_i64(),)]);
    let noted = format!(
        "SELECT conversation_id FROM {}.held_conversations WHERE part = 0",
        h.namespace()
    );
    assert_eq!(
        rows::<(String,)>(&h, noted.clone(), ()).await,
        vec![(c.conv.as_str().to_string(),)]
    );
    // Still held: the next call reads the hold once and leaves the backlog parked.
    assert_eq!(
        h.store
            .purge_all(PurgeOptions::default())
            .await
            .unwrap()
            .messages,
        0
    );
    // Lifted: the parked entry is purged and the conversation forgotten.
    h.store.set_legal_hold(&c.conv, false).await.unwrap();
    assert_eq!(
        h.store
            .purge_all(PurgeOptions::default())
            .await
            .unwrap()
            .messages,
        1
    );
    assert!(rows::<(String,)>(&h, noted, ()).await.is_empty());
    h.finish().await;
}

/// Request records go with their queue entries, whichever call reaches them first: a group whose
/// messages the batch cannot take (the budget ran out) still expires its records, so the next
/// call's group finds some of its records gone already, and its one conditional batch does not
/// apply. The records still due must be expired all the same (read and batched again), and none
/// may be left behind when the backlog is drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_records_are_all_expired_when_batches_cut_groups_short() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let n = 120;
    let mut due = Timestamp::from_millis(0);
    for i in 0..n {
        due = recalled(&h, &c, &format!("m{i}")).await.1;
    }
    let records = format!(
        "SELECT request_id FROM {}.conversation_state WHERE conversation_id = ? AND kind = 2",
        h.namespace()
    );
    let before = rows::<(String,)>(&h, records.clone(), (c.conv.as_str(),)).await;
    assert_eq!(before.len(), n, "a record per recall");

    h.clock.set(due.saturating_add(PAST_LAG));
    // 7 a call: every group of 50 is cut short, and the next one meets records already gone.
    let mut removed = 0;
    for call in 0.. {
        assert!(call < 100, "the backlog drains");
        let report = h.store.purge(PurgeOptions { batch_size: 7 }).await.unwrap();
        assert!(report.messages <= 7);
        removed += report.messages;
        if !report.more {
            break;
        }
    }
    assert_eq!(removed, n as u64);
    assert!(
        rows::<(String,)>(&h, records, (c.conv.as_str(),))
            .await
            .is_empty(),
        "no request record outlives its retention"
    );
    h.finish().await;
}
