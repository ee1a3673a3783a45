//! How to reach the cluster and how to lay the data out: nodes, credentials, keyspace,
//! replication, consistency levels, bucket width. Private fields, `with_*` builders, checked by
//! [`ScyllaConfig::validate`] when the backend is built.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imstore_core::{Error, Result};
use scylla::statement::{Consistency, SerialConsistency};

/// The default width of a message bucket: 10 days, as Discord chose for its channels.
pub const DEFAULT_BUCKET_WIDTH: Duration = Duration::from_secs(10 * 24 * 3600);

/// How the keyspace is replicated when the store creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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

/// A user name and password for `PasswordAuthenticator`; the password never appears in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: String,
}

impl Credentials {
    /// Credentials of `user`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            user: user.into(),
            password: password.into(),
        }
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// TLS to every node (rustls): the server's certificate is checked against the given CA file,
/// or against the public web roots when none is given, and the client may present its own
/// certificate (mutual TLS). The driver checks the certificate against the node's IP address
/// (rustls `ServerName::IpAddress`), so node certificates need IP subject alternative names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScyllaTls {
    ca_file: Option<PathBuf>,
    client_identity: Option<(PathBuf, PathBuf)>,
}

impl ScyllaTls {
    /// TLS trusting the public web roots, without a client certificate.
    pub fn new() -> Self {
        ScyllaTls::default()
    }

    /// Trusts the certificates of this PEM file instead of the public web roots (a private CA).
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents this PEM certificate chain and PEM private key to the nodes (mutual TLS).
    pub fn with_client_identity(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.client_identity = Some((cert.into(), key.into()));
        self
    }

    /// The CA file, when not the public web roots.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The client certificate chain and key files, for mutual TLS.
    pub fn client_identity(&self) -> Option<(&Path, &Path)> {
        self.client_identity
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()))
    }

    /// The rustls configuration: reads and parses the files, so a missing or malformed one is
    /// `InvalidInput` on `tls` (naming the file, never its contents).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let bad = |path: &Path, what: &str| {
            Error::invalid_input("tls", format!("{}: {what}", path.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|_| bad(path, "cannot read the CA file"))?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|_| bad(path, "is not a PEM certificate file"))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(bad(path, "holds no usable CA certificate"));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        // One explicit provider, so the configuration never depends on which crypto provider
        // another crate of the process installed as rustls's default.
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid_input("tls", format!("protocol versions: {e}")))?
        .with_root_certificates(roots);
        let config = match &self.client_identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|_| bad(cert, "cannot read the client certificate"))?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|_| bad(cert, "is not a PEM certificate file"))?;
                if chain.is_empty() {
                    return Err(bad(cert, "holds no certificate"));
                }
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|_| bad(key, "cannot read a PEM private key from it"))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|_| bad(key, "does not match the client certificate"))?
            }
        };
        Ok(Arc::new(config))
    }
}

/// Everything the ScyllaDB/Cassandra backend needs; [`ScyllaConfig::new`] gives production
/// defaults (RF 3, LOCAL_QUORUM, SERIAL, 10-day buckets, schema created at start-up).
#[derive(Clone, Debug)]
pub struct ScyllaConfig {
    nodes: Vec<String>,
    keyspace: String,
    credentials: Option<Credentials>,
    tls: Option<ScyllaTls>,
    replication: Replication,
    consistency: Consistency,
    serial_consistency: SerialConsistency,
    bucket_width: Duration,
    create_schema: bool,
    request_timeout: Duration,
    fetch_schema_metadata: bool,
}

impl ScyllaConfig {
    /// Production defaults for `keyspace` on the cluster reachable through `nodes` (`host:port`).
    pub fn new(nodes: impl IntoIterator<Item = impl Into<String>>, keyspace: &str) -> Self {
        ScyllaConfig {
            nodes: nodes.into_iter().map(Into::into).collect(),
            keyspace: keyspace.to_string(),
            credentials: None,
            tls: None,
            replication: Replication::Everywhere(3),
            consistency: Consistency::LocalQuorum,
            // SERIAL, not LOCAL_SERIAL: a Paxos round at LOCAL_SERIAL only reaches the local
            // datacenter's replicas, so two datacenters could both win the same feed head or
            // version of one conversation.
            serial_consistency: SerialConsistency::Serial,
            bucket_width: DEFAULT_BUCKET_WIDTH,
            create_schema: true,
            request_timeout: Duration::from_secs(10),
            fetch_schema_metadata: true,
        }
    }

    /// The same defaults from a comma-separated node list (the `IMSTORE_SCYLLA_NODES` format).
    pub fn from_node_list(list: &str, keyspace: &str) -> Self {
        ScyllaConfig::new(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            keyspace,
        )
    }

    /// Logs in with these credentials (`PasswordAuthenticator`).
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Connects to every node over TLS (`None`: plain TCP, the default).
    pub fn with_tls(mut self, tls: Option<ScyllaTls>) -> Self {
        self.tls = tls;
        self
    }

    /// The replication used when the keyspace is created (an existing keyspace is left as it is).
    pub fn with_replication(mut self, replication: Replication) -> Self {
        self.replication = replication;
        self
    }

    /// The consistency of reads, plain writes and the commit of conditional writes.
    pub fn with_consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    /// The consistency of the Paxos phase of conditional writes and of the reads that settle a
    /// conditional write whose outcome a timeout left unknown. The default, `SERIAL`, keeps
    /// every conversation linearizable across datacenters; `LOCAL_SERIAL` (one datacenter's
    /// round trips instead of a cross-datacenter Paxos) is safe only for a single-datacenter
    /// keyspace, or when each conversation is written by one datacenter only (per-DC
    /// ownership): otherwise two datacenters can both apply a transition at the same feed
    /// position or version.
    pub fn with_serial_consistency(mut self, serial: SerialConsistency) -> Self {
        self.serial_consistency = serial;
        self
    }

    /// The width of the time buckets messages are partitioned by; fixed for the life of a keyspace.
    pub fn with_bucket_width(mut self, width: Duration) -> Self {
        self.bucket_width = width;
        self
    }

    /// Whether the store creates (and migrates) the keyspace and tables at start-up.
    pub fn with_create_schema(mut self, create: bool) -> Self {
        self.create_schema = create;
        self
    }

    /// The client-side timeout of one statement.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Whether the driver fetches schema metadata (of this keyspace only) for token-aware routing.
    pub fn with_fetch_schema_metadata(mut self, fetch: bool) -> Self {
        self.fetch_schema_metadata = fetch;
        self
    }

    /// The same configuration for another keyspace of the same cluster.
    pub fn with_keyspace(mut self, keyspace: &str) -> Self {
        self.keyspace = keyspace.to_string();
        self
    }

    /// The contact points.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The keyspace holding the store's tables.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// The credentials, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The TLS settings, when the connections are encrypted.
    pub fn tls(&self) -> Option<&ScyllaTls> {
        self.tls.as_ref()
    }

    /// The replication used when the keyspace is created.
    pub fn replication(&self) -> &Replication {
        &self.replication
    }

    /// The consistency of reads and writes.
    pub fn consistency(&self) -> Consistency {
        self.consistency
    }

    /// The consistency of the Paxos phase (`SERIAL` unless set otherwise).
    pub fn serial_consistency(&self) -> SerialConsistency {
        self.serial_consistency
    }

    /// The bucket width.
    pub fn bucket_width(&self) -> Duration {
        self.bucket_width
    }

    /// Whether the schema is created at start-up.
    pub fn create_schema(&self) -> bool {
        self.create_schema
    }

    /// The client-side timeout of one statement.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Whether the driver fetches schema metadata.
    pub fn fetch_schema_metadata(&self) -> bool {
        self.fetch_schema_metadata
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
        if self.request_timeout.is_zero() {
            return Err(Error::invalid_input(
                "request_timeout",
                "must be greater than zero",
            ));
        }
        if self.credentials.as_ref().is_some_and(|c| c.user.is_empty()) {
            return Err(Error::invalid_input(
                "credentials",
                "the user name must not be empty",
            ));
        }
        if let Some(tls) = &self.tls {
            tls.client_config()?;
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
        assert_eq!(c.nodes(), ["127.0.0.1:9042", "127.0.0.2:9042"]);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn tls_files_that_cannot_be_used_are_invalid_input_on_tls() {
        let dir = std::env::temp_dir().join(format!("imstore-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let base = ScyllaConfig::new(["n:9042"], "ks");
        assert!(
            base.clone()
                .with_tls(Some(ScyllaTls::new()))
                .validate()
                .is_ok()
        );
        for tls in [
            ScyllaTls::new().with_ca_file(dir.join("missing.pem")),
            ScyllaTls::new().with_ca_file(&junk),
            ScyllaTls::new().with_client_identity(&junk, &junk),
        ] {
            let e = base
                .clone()
                .with_tls(Some(tls.clone()))
                .validate()
                .unwrap_err();
            assert_eq!(e.field(), Some("tls"), "{tls:?}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_never_prints_the_password() {
        let c = ScyllaConfig::new(["n:9042"], "ks")
            .with_credentials(Credentials::new("imstore", "s3cr3t-pw"));
        let printed = format!("{c:?}");
        assert!(printed.contains("imstore"), "{printed}");
        assert!(!printed.contains("s3cr3t-pw"), "{printed}");
    }
}
