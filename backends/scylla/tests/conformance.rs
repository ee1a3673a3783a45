//! Every conformance case against the CQL server named by `IMSTORE_SCYLLA_NODES`
//! (Apache Cassandra 5 from `scripts/servers.sh`), each in its own keyspace.

mod common;

imstore_conformance::conformance_tests!(common::ScyllaFactory::new().await);
