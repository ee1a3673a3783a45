//! How to reach the cluster and how to lay the data out: nodes, keyspace, replication,
//! consistency levels, bucket width.

use std::time::Duration;

use imstore_core::{Error, Result};
use scylla::statement::{Consistency, SerialConsistency};

/// The default width of a message bucket: 10 days, as Discord chose for its channels.
pub const DEFAULT_BUCKET_WIDTH: Duration = Duration::from_secs(10 * 24 * 3600);

/// How the keyspace is replicated when the store creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replication {
    /// `NetworkTopologyStrategy` with the same factor in every datacenter (the usual choice).
    Everywhere(u32),
    /// `NetworkTopologyStrategy` with a factor per named datacenter.
    PerDatacenter(Vec<(String, u32)>),
}

impl Replication {
    /// The replication map as CQL, validated so that it can be inlined into DDL safely.
    pub fn to_cql(&self) -> Result<String> {
        match self {
            Replication::Everywhere(rf) if *rf > 0 => Ok(format!(
                "{{'class': 'NetworkTopologyStrategy', 'replication_factor': {rf}}}"
            )),
            Replication::PerDatacenter(dcs) if !dcs.is_empty() => {
                let mut parts = vec!["'class': 'NetworkTopologyStrategy'".to_string()];
                for (dc, rf) in dcs {
                    let ok = !dc.is_empty()
                        && dc
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                    if !ok || *rf == 0 {
                        return Err(Error::invalid_input(
                            "replication",
                            "datacenter names must be [A-Za-z0-9_.-]+ with a factor above zero",
                        ));
                    }
                    parts.push(format!("'{dc}': {rf}"));
                }
                Ok(format!("{{{}}}", parts.join(", ")))
            }
            _ => Err(Error::invalid_input(
                "replication",
                "needs a replication factor above zero",
            )),
        }
    }
}

/// Everything the ScyllaDB/Cassandra backend needs; `ScyllaConfig::new(nodes, keyspace)` gives
/// production defaults (RF 3, LOCAL_QUORUM, LOCAL_SERIAL, 10-day buckets).
#[derive(Clone, Debug)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// The keyspace holding the store's tables: `[a-z][a-z0-9_]{0,47}`.
    pub keyspace: String,
    /// Replication used when the keyspace is created (an existing keyspace is left as it is).
    pub replication: Replication,
    /// Consistency of reads and writes (and the commit consistency of conditional writes).
    pub consistency: Consistency,
    /// Consistency of the Paxos phase of conditional writes.
    pub serial_consistency: SerialConsistency,
    /// Width of the time buckets messages are partitioned by; fixed for the life of a keyspace.
    pub bucket_width: Duration,
    /// Create the keyspace and tables (idempotently) when the store starts.
    pub create_schema: bool,
    /// Client-side timeout of one statement.
    pub request_timeout: Duration,
    /// How many read-plan-CAS rounds a transition tries under contention before giving up with
    /// `Unavailable`.
    pub max_cas_attempts: u32,
    /// Fetch schema metadata for token-aware routing (only of this keyspace).
    pub fetch_schema_metadata: bool,
}

impl ScyllaConfig {
    /// Production defaults for `keyspace` on the cluster reachable through `nodes`.
    pub fn new(nodes: impl IntoIterator<Item = impl Into<String>>, keyspace: &str) -> Self {
        ScyllaConfig {
            nodes: nodes.into_iter().map(Into::into).collect(),
            keyspace: keyspace.to_string(),
            replication: Replication::Everywhere(3),
            consistency: Consistency::LocalQuorum,
            serial_consistency: SerialConsistency::LocalSerial,
            bucket_width: DEFAULT_BUCKET_WIDTH,
            create_schema: true,
            request_timeout: Duration::from_secs(10),
            max_cas_attempts: 400,
            fetch_schema_metadata: true,
        }
    }

    /// The same config from a comma-separated node list (`IMSTORE_SCYLLA_NODES` format).
    pub fn from_node_list(list: &str, keyspace: &str) -> Self {
        ScyllaConfig::new(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            keyspace,
        )
    }

    /// Checks every field; refuses what would be inlined into DDL unsafely.
    pub fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(Error::invalid_input(
                "nodes",
                "needs at least one contact point",
            ));
        }
        validate_keyspace(&self.keyspace)?;
        self.replication.to_cql()?;
        if self.bucket_width < Duration::from_secs(3600) {
            return Err(Error::invalid_input(
                "bucket_width",
                "must be at least one hour",
            ));
        }
        if self.bucket_ms() > i64::from(i32::MAX) * 1000 {
            return Err(Error::invalid_input("bucket_width", "is too large"));
        }
        if self.max_cas_attempts == 0 {
            return Err(Error::invalid_input(
                "max_cas_attempts",
                "must be at least one",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::invalid_input(
                "request_timeout",
                "must be greater than zero",
            ));
        }
        Ok(())
    }

    pub(crate) fn bucket_ms(&self) -> i64 {
        i64::try_from(self.bucket_width.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A keyspace name CQL accepts unquoted: a lowercase letter, then up to 47 of `[a-z0-9_]`.
pub fn validate_keyspace(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = name.len() <= 48
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(
            "keyspace",
            "must be a lowercase letter followed by at most 47 of [a-z0-9_]",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names_that_could_inject_cql_are_refused() {
        assert!(validate_keyspace("sc_123_0_abcdef01").is_ok());
        for bad in ["", "1abc", "a-b", "a;DROP", "A", &"a".repeat(49)] {
            assert!(validate_keyspace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replication_renders_as_network_topology() {
        assert_eq!(
            Replication::Everywhere(1).to_cql().unwrap(),
            "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
        );
        assert!(Replication::Everywhere(0).to_cql().is_err());
        assert!(
            Replication::PerDatacenter(vec![("dc'1".into(), 3)])
                .to_cql()
                .is_err()
        );
    }

    #[test]
    fn node_lists_split_on_commas() {
        let c = ScyllaConfig::from_node_list("127.0.0.1:9042, 127.0.0.2:9042,", "ks");
        assert_eq!(c.nodes, vec!["127.0.0.1:9042", "127.0.0.2:9042"]);
        assert!(c.validate().is_ok());
    }
}
