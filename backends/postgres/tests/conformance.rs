//! Every conformance case against the real PostgreSQL from `scripts/servers.sh`, each in its own
//! schema made by the crate's testing factory, each reported as its own test; then all of them
//! again through `Arc<dyn MessageStore>`.

use imstore_postgres::testing::PgFactory;

imstore_conformance::conformance_tests!(PgFactory::from_env());

/// The same cases through the trait object, to catch forwarding bugs.
mod through_dyn {
    use imstore_postgres::testing::PgFactory;

    imstore_conformance::conformance_tests!(imstore_conformance::DynFactory(PgFactory::from_env()));
}

/// The history checker: concurrent clients, then a linearizability check of what they saw.
mod history {
    use imstore_postgres::testing::PgFactory;

    imstore_conformance::history_tests!(PgFactory::from_env());
}
