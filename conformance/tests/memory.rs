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
fn the_suite_has_at_least_45_cases() {
    assert!(
        imstore_conformance::CASE_NAMES.len() >= 45,
        "{}",
        imstore_conformance::CASE_NAMES.len()
    );
}
