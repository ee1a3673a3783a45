//! The whole suite on `MemoryStore`, directly and through `Arc<dyn MessageStore>`.

mod direct {
    imstore_conformance::conformance_tests!(imstore_conformance::memory::MemoryFactory::default());
}

mod through_arc_dyn {
    imstore_conformance::conformance_tests!(imstore_conformance::DynFactory(
        imstore_conformance::memory::MemoryFactory::default()
    ));
}

#[test]
fn the_suite_has_at_least_95_cases() {
    assert!(
        imstore_conformance::CASE_NAMES.len() >= 95,
        "{}",
        imstore_conformance::CASE_NAMES.len()
    );
}

/// The fault driver's accounting on a store that never fails: every write acknowledged once,
/// nothing lost, nothing duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fault_driver_accounts_a_run_without_faults() {
    use imstore_conformance::faults::{Load, writes_survive_a_crash};
    let factory = imstore_conformance::memory::MemoryFactory::default();
    let h = imstore_conformance::Harness::start(&factory, Default::default()).await;
    let mut load = Load::default();
    load.messages_per_writer = 5;
    let report = writes_survive_a_crash(&h, load, async {}).await;
    assert!(report.clean(), "{report:?}");
    assert_eq!((report.acked_inserts, report.acked_transitions), (80, 80));
    assert!(report.errors.is_empty() && report.abandoned == 0);
    h.finish().await;
}
