//! Opening a store from a URL at run time, with the backend, credentials and TLS the URL names.
//!
//! | URL | backend | feature |
//! |-----|---------|---------|
//! | `memory://` | a fresh, empty [`MemoryStore`] (not durable) | always |
//! | `postgres://user:password@host:5432/db?schema=chat&sslmode=verify-full` | PostgreSQL | `postgres` |
//! | `mongodb://user:password@h1,h2/db?replicaSet=rs0&tls=true`, `mongodb+srv://…` | MongoDB | `mongodb` |
//! | `scylla://user:password@h1:9042,h2/keyspace?tls=true&ca=/etc/ca.pem` | ScyllaDB / Cassandra | `scylla` |
//!
//! Parameters of imstore's own (removed before the URL reaches the driver):
//!
//! * PostgreSQL: `schema` (the tables' schema, which must exist), `max_connections` (pool size),
//!   `migrate` (`true`/`false`: apply migrations on connect, default `true`). Every other
//!   parameter (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `application_name`, …) goes to the
//!   driver: TLS is the driver's `sslmode`.
//! * MongoDB: `operation_timeout` (seconds). Every other option (`tls`, `tlsCAFile`,
//!   `authSource`, `replicaSet`, …) goes to the driver. The database is the URL's path.
//! * Scylla (`scylla://` or `cassandra://`; port 9042 when none is given): `tls` (`true`/`false`),
//!   `ca` (PEM CA file; implies `tls`), `cert` and `key` (PEM client certificate and key, mutual
//!   TLS; imply `tls`), `rf` (replication factor of a keyspace the store creates),
//!   `dc` (`dc1:3,dc2:3`, replication per datacenter), `consistency` (`local_quorum`, `quorum`,
//!   `one`, …), `create_schema` (`true`/`false`). Any other parameter is refused.
//!
//! User name and password are percent-decoded; [`Credentials`] given to
//! [`StoreUrl::parse_with`] replace the URL's (so that a password can come from an
//! environment variable instead of a command line). A malformed URL, an unknown scheme, a
//! backend whose feature this build lacks and a bad parameter are `InvalidInput` on `url` (or on
//! the setting's own name, such as `tls` or `keyspace`); no error message quotes the password.

use std::sync::Arc;

use imstore_core::{Error, MemoryStore, MessageStore, Result, StoreSettings};

/// A user name and password that replace the URL's own, when set.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (`None`: the URL's).
    pub user: Option<String>,
    /// The password (`None`: the URL's).
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    // Never print a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A parsed store URL: which backend, and its configuration. Build with [`StoreUrl::parse`],
/// open with [`StoreUrl::open`].
// Parsed once per process and moved into `open`: boxing the configurations would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum StoreUrl {
    /// `memory://`: a fresh in-memory store per open.
    Memory,
    /// `postgres://` or `postgresql://`.
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    Postgres(imstore_postgres::PostgresConfig),
    /// `mongodb://` or `mongodb+srv://`.
    #[cfg(feature = "mongodb")]
    #[cfg_attr(docsrs, doc(cfg(feature = "mongodb")))]
    Mongodb(imstore_mongodb::MongoConfig),
    /// `scylla://` or `cassandra://`.
    #[cfg(feature = "scylla")]
    #[cfg_attr(docsrs, doc(cfg(feature = "scylla")))]
    Scylla(imstore_scylla::ScyllaConfig),
}

/// What [`StoreUrl::parse_server`] found in a URL.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerUrl {
    /// The server's configuration (its namespace a placeholder when the URL names none).
    pub store: StoreUrl,
    /// The namespace the URL names: a PostgreSQL `schema`, a MongoDB database, a keyspace.
    pub namespace: Option<String>,
    /// The imstore parameters the URL gave (`rf`, `schema`, `tls`, …), by name.
    pub params: Vec<String>,
}

/// A store opened from a URL, its backend's type kept so that tooling can reach the backend
/// (migrations, administration); [`AnyStore::as_dyn`] for the trait.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnyStore {
    /// The in-memory store.
    Memory(MemoryStore),
    /// A PostgreSQL store.
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    Postgres(imstore_postgres::PostgresStore),
    /// A MongoDB store.
    #[cfg(feature = "mongodb")]
    #[cfg_attr(docsrs, doc(cfg(feature = "mongodb")))]
    Mongodb(imstore_mongodb::MongoStore),
    /// A ScyllaDB / Cassandra store.
    #[cfg(feature = "scylla")]
    #[cfg_attr(docsrs, doc(cfg(feature = "scylla")))]
    Scylla(imstore_scylla::ScyllaStore),
}

impl AnyStore {
    /// The store as a [`MessageStore`] trait object.
    pub fn as_dyn(&self) -> &dyn MessageStore {
        match self {
            AnyStore::Memory(s) => s,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(s) => s,
            #[cfg(feature = "mongodb")]
            AnyStore::Mongodb(s) => s,
            #[cfg(feature = "scylla")]
            AnyStore::Scylla(s) => s,
        }
    }

    /// The store as a shareable trait object.
    pub fn into_dyn(self) -> Arc<dyn MessageStore> {
        match self {
            AnyStore::Memory(s) => Arc::new(s),
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(s) => Arc::new(s),
            #[cfg(feature = "mongodb")]
            AnyStore::Mongodb(s) => Arc::new(s),
            #[cfg(feature = "scylla")]
            AnyStore::Scylla(s) => Arc::new(s),
        }
    }
}

/// Opens the store `url` names with `settings` (see the [module](self) for the URL forms).
pub async fn open(url: &str, settings: StoreSettings) -> Result<Arc<dyn MessageStore>> {
    Ok(StoreUrl::parse(url)?.open(settings).await?.into_dyn())
}

/// The backend names this build can open, for messages and `--help`.
pub fn supported_schemes() -> Vec<&'static str> {
    let mut out = vec!["memory://"];
    if cfg!(feature = "postgres") {
        out.push("postgres://");
    }
    if cfg!(feature = "mongodb") {
        out.push("mongodb://");
        out.push("mongodb+srv://");
    }
    if cfg!(feature = "scylla") {
        out.push("scylla://");
    }
    out
}

impl StoreUrl {
    /// Parses `url` (see the [module](self)); checks every setting as the backend's own
    /// configuration would, without connecting.
    pub fn parse(url: &str) -> Result<Self> {
        StoreUrl::parse_with(url, &Credentials::default())
    }

    /// [`StoreUrl::parse`], with the user name and password in `credentials` (when set) in
    /// place of the URL's.
    pub fn parse_with(url: &str, credentials: &Credentials) -> Result<Self> {
        Ok(StoreUrl::parse_parts(Parts::split(url)?, credentials)?.0)
    }

    /// The server a URL names, for tools that make their own namespaces on it (the conformance
    /// command): as [`StoreUrl::parse_with`], but the URL need not name a database or keyspace
    /// (the configuration then carries the placeholder `imstore`, and a MongoDB URL goes to the
    /// driver without a path, so authentication keeps its default source).
    pub fn parse_server(url: &str, credentials: &Credentials) -> Result<ServerUrl> {
        let mut parts = Parts::split(url)?;
        parts.server = true;
        let (store, parts) = StoreUrl::parse_parts(parts, credentials)?;
        Ok(ServerUrl {
            store,
            namespace: parts.namespace,
            params: parts.taken,
        })
    }

    fn parse_parts(mut parts: Parts, credentials: &Credentials) -> Result<(Self, Parts)> {
        if let Some(user) = &credentials.user {
            parts.user = Some(user.clone());
        }
        if let Some(password) = &credentials.password {
            parts.password = Some(password.clone());
        }
        match parts.scheme.as_str() {
            "memory" => {
                if !parts.hosts.is_empty() || !parts.path.is_empty() || !parts.query.is_empty() {
                    return Err(Error::invalid_input(
                        "url",
                        "memory:// takes no host, path or parameter",
                    ));
                }
                Ok((StoreUrl::Memory, parts))
            }
            "postgres" | "postgresql" => postgres(parts),
            "mongodb" | "mongodb+srv" => mongodb(parts),
            "scylla" | "cassandra" => scylla(parts),
            other => Err(Error::invalid_input(
                "url",
                format!(
                    "scheme {other:?} names no backend; this build opens {}",
                    supported_schemes().join(", ")
                ),
            )),
        }
    }

    /// The backend's name ("memory", "postgres", "mongodb", "scylla").
    pub fn backend(&self) -> &'static str {
        match self {
            StoreUrl::Memory => "memory",
            #[cfg(feature = "postgres")]
            StoreUrl::Postgres(_) => "postgres",
            #[cfg(feature = "mongodb")]
            StoreUrl::Mongodb(_) => "mongodb",
            #[cfg(feature = "scylla")]
            StoreUrl::Scylla(_) => "scylla",
        }
    }

    /// Where the data lives, for messages (schema, database or keyspace; never credentials).
    pub fn namespace(&self) -> String {
        match self {
            StoreUrl::Memory => "(memory)".to_string(),
            #[cfg(feature = "postgres")]
            StoreUrl::Postgres(c) => c.schema().unwrap_or("(search_path)").to_string(),
            #[cfg(feature = "mongodb")]
            StoreUrl::Mongodb(c) => c.database().to_string(),
            #[cfg(feature = "scylla")]
            StoreUrl::Scylla(c) => c.keyspace().to_string(),
        }
    }

    /// Connects (creating or migrating the schema when the configuration says so, as each
    /// backend's `connect` does) and builds the store with `settings`.
    pub async fn open(self, settings: StoreSettings) -> Result<AnyStore> {
        Ok(match self {
            StoreUrl::Memory => AnyStore::Memory(MemoryStore::new(settings)),
            #[cfg(feature = "postgres")]
            StoreUrl::Postgres(c) => {
                AnyStore::Postgres(imstore_postgres::PostgresStore::connect(c, settings).await?)
            }
            #[cfg(feature = "mongodb")]
            StoreUrl::Mongodb(c) => {
                AnyStore::Mongodb(imstore_mongodb::MongoStore::connect(c, settings).await?)
            }
            #[cfg(feature = "scylla")]
            StoreUrl::Scylla(c) => {
                AnyStore::Scylla(imstore_scylla::ScyllaStore::connect(c, settings).await?)
            }
        })
    }
}

/// A URL cut into the pieces every backend's form shares:
/// `scheme://[user[:password]@]hosts[/path][?k=v&…]`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Parts {
    pub(crate) scheme: String,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) hosts: String,
    pub(crate) path: String,
    pub(crate) query: Vec<(String, String)>,
    /// The imstore parameters taken out so far, by name.
    pub(crate) taken: Vec<String>,
    /// Parsing for [`StoreUrl::parse_server`]: the namespace is optional.
    pub(crate) server: bool,
    /// The namespace the URL names (schema, database, keyspace), once parsed.
    pub(crate) namespace: Option<String>,
}

impl Parts {
    pub(crate) fn split(url: &str) -> Result<Parts> {
        let url = url.trim();
        if url.eq_ignore_ascii_case("memory:") {
            return Parts::split("memory://");
        }
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            Error::invalid_input(
                "url",
                format!(
                    "is not a URL (scheme://…); this build opens {}",
                    supported_schemes().join(", ")
                ),
            )
        })?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(Error::invalid_input("url", "has a malformed scheme"));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, q),
            None => (rest, ""),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        // The last '@' ends the user info: a password may contain an unescaped '@'.
        let (user, password, hosts) = match authority.rsplit_once('@') {
            Some((info, hosts)) => {
                let (u, p) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(decode(p, "password")?)),
                    None => (info, None),
                };
                (Some(decode(u, "user")?), p, hosts)
            }
            None => (None, None, authority),
        };
        let mut pairs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            pairs.push((decode(k, "url")?, decode(v, "url")?));
        }
        Ok(Parts {
            scheme,
            user,
            password,
            hosts: hosts.to_string(),
            path: decode(path, "url")?,
            query: pairs,
            taken: Vec::new(),
            server: false,
            namespace: None,
        })
    }

    /// Removes and returns parameter `key` (the last one, when repeated).
    #[cfg_attr(
        not(any(feature = "postgres", feature = "mongodb", feature = "scylla")),
        allow(dead_code)
    )]
    pub(crate) fn take(&mut self, key: &str) -> Option<String> {
        let mut found = None;
        self.query.retain(|(k, v)| {
            if k == key {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        if found.is_some() {
            self.taken.push(key.to_string());
        }
        found
    }

    /// The URL again, percent-encoding the user info and the parameters (what goes to a
    /// driver, after imstore's own parameters were taken out).
    #[cfg(any(feature = "postgres", feature = "mongodb"))]
    pub(crate) fn render(&self) -> String {
        let mut s = format!("{}://", self.scheme);
        if let Some(u) = &self.user {
            s.push_str(&encode(u));
            if let Some(p) = &self.password {
                s.push(':');
                s.push_str(&encode(p));
            }
            s.push('@');
        }
        s.push_str(&self.hosts);
        s.push('/');
        s.push_str(&encode_path(&self.path));
        if !self.query.is_empty() {
            s.push('?');
            let q: Vec<String> = self
                .query
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect();
            s.push_str(&q.join("&"));
        }
        s
    }
}

/// Percent-decodes `s`; a malformed escape or non-UTF-8 result is `InvalidInput` on `field`
/// (without quoting `s`: it may be a password).
fn decode(s: &str, field: &'static str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::invalid_input(field, "has a malformed %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::invalid_input(field, "is not UTF-8 once decoded"))
}

#[cfg(any(feature = "postgres", feature = "mongodb"))]
fn encode_with(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(any(feature = "postgres", feature = "mongodb"))]
fn encode(s: &str) -> String {
    encode_with(s, |_| false)
}

#[cfg(any(feature = "postgres", feature = "mongodb"))]
fn encode_path(s: &str) -> String {
    encode_with(s, |b| b == b'/')
}

/// The namespace of a [`StoreUrl::parse_server`] configuration whose URL names none.
#[cfg_attr(not(any(feature = "mongodb", feature = "scylla")), allow(dead_code))]
const PLACEHOLDER: &str = "imstore";

/// A boolean parameter: `true`/`false`, `1`/`0`, `yes`/`no`.
#[cfg_attr(not(any(feature = "postgres", feature = "scylla")), allow(dead_code))]
fn flag(value: &str, field: &'static str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(Error::invalid_input(field, "must be true or false")),
    }
}

#[cfg_attr(
    not(any(feature = "postgres", feature = "mongodb", feature = "scylla")),
    allow(dead_code)
)]
fn number<T: std::str::FromStr>(value: &str, field: &'static str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| Error::invalid_input(field, format!("{value:?} is not a number")))
}

#[cfg(not(feature = "postgres"))]
fn postgres(_: Parts) -> Result<(StoreUrl, Parts)> {
    Err(missing_feature("postgres"))
}

#[cfg(not(feature = "mongodb"))]
fn mongodb(_: Parts) -> Result<(StoreUrl, Parts)> {
    Err(missing_feature("mongodb"))
}

#[cfg(not(feature = "scylla"))]
fn scylla(_: Parts) -> Result<(StoreUrl, Parts)> {
    Err(missing_feature("scylla"))
}

#[cfg(not(all(feature = "postgres", feature = "mongodb", feature = "scylla")))]
fn missing_feature(feature: &str) -> Error {
    Error::invalid_input(
        "url",
        format!(
            "names the {feature} backend, but this build of imstore lacks the `{feature}` cargo \
             feature; it opens {}",
            supported_schemes().join(", ")
        ),
    )
}

#[cfg(feature = "postgres")]
fn postgres(mut parts: Parts) -> Result<(StoreUrl, Parts)> {
    use imstore_postgres::PostgresConfig;
    let schema = parts.take("schema");
    parts.namespace = schema.clone();
    let pool = parts.take("max_connections");
    let migrate = parts.take("migrate");
    let mut config = PostgresConfig::new(parts.render());
    if let Some(schema) = schema {
        config = config.with_schema(schema);
    }
    if let Some(n) = pool {
        config = config.with_max_connections(number(&n, "max_connections")?);
    }
    if let Some(m) = migrate {
        config = config.with_migrate_on_connect(flag(&m, "migrate")?);
    }
    config.validate()?;
    Ok((StoreUrl::Postgres(config), parts))
}

#[cfg(feature = "mongodb")]
fn mongodb(mut parts: Parts) -> Result<(StoreUrl, Parts)> {
    use imstore_mongodb::MongoConfig;
    let timeout = parts.take("operation_timeout");
    if parts.hosts.is_empty() {
        return Err(Error::invalid_input(
            "url",
            "names no host (mongodb://host/db)",
        ));
    }
    let database = parts.path.trim_end_matches('/').to_string();
    let database = if !database.is_empty() {
        parts.namespace = Some(database.clone());
        database
    } else if parts.server {
        PLACEHOLDER.to_string()
    } else {
        return Err(Error::invalid_input(
            "database",
            "the URL names no database (mongodb://host/db)",
        ));
    };
    let mut config = MongoConfig::new(parts.render(), database);
    if let Some(t) = timeout {
        let secs: f64 = number(&t, "operation_timeout")?;
        if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
            return Err(Error::invalid_input(
                "operation_timeout",
                "must be a number of seconds above zero",
            ));
        }
        config = config.with_operation_timeout(std::time::Duration::from_secs_f64(secs));
    }
    config.validate()?;
    Ok((StoreUrl::Mongodb(config), parts))
}

#[cfg(feature = "scylla")]
fn scylla(mut parts: Parts) -> Result<(StoreUrl, Parts)> {
    use imstore_scylla::{Credentials, Replication, ScyllaConfig, ScyllaTls};
    use scylla_consistency::parse as consistency;

    let keyspace = parts.path.trim_end_matches('/').to_string();
    let keyspace = if !keyspace.is_empty() {
        parts.namespace = Some(keyspace.clone());
        keyspace
    } else if parts.server {
        PLACEHOLDER.to_string()
    } else {
        return Err(Error::invalid_input(
            "keyspace",
            "the URL names no keyspace (scylla://host1,host2/keyspace)",
        ));
    };
    let mut nodes = Vec::new();
    for host in parts.hosts.split(',').map(str::trim) {
        if host.is_empty() {
            return Err(Error::invalid_input("nodes", "has an empty host"));
        }
        // A bare IPv6 address is bracketed ([::1]:9042); a host without a port gets 9042.
        let has_port = match host.rsplit_once(':') {
            Some((h, p)) => {
                (!h.contains(':') || h.ends_with(']')) && p.chars().all(|c| c.is_ascii_digit())
            }
            None => false,
        };
        nodes.push(if has_port {
            host.to_string()
        } else {
            format!("{host}:9042")
        });
    }
    let mut config = ScyllaConfig::new(nodes, &keyspace);
    match (parts.user.take(), parts.password.take()) {
        (Some(user), password) => {
            config = config.with_credentials(Credentials::new(user, password.unwrap_or_default()))
        }
        (None, Some(_)) => {
            return Err(Error::invalid_input(
                "credentials",
                "a password without a user name",
            ));
        }
        (None, None) => {}
    }
    let tls_flag = parts.take("tls").map(|v| flag(&v, "tls")).transpose()?;
    let ca = parts.take("ca");
    let cert = parts.take("cert");
    let key = parts.take("key");
    let wants_tls = tls_flag.unwrap_or(false) || ca.is_some() || cert.is_some() || key.is_some();
    if tls_flag == Some(false) && wants_tls {
        return Err(Error::invalid_input(
            "tls",
            "tls=false with a CA file or a client certificate",
        ));
    }
    if wants_tls {
        let mut tls = ScyllaTls::new();
        if let Some(ca) = ca {
            tls = tls.with_ca_file(ca);
        }
        match (cert, key) {
            (Some(c), Some(k)) => tls = tls.with_client_identity(c, k),
            (None, None) => {}
            _ => {
                return Err(Error::invalid_input(
                    "tls",
                    "cert and key go together (mutual TLS)",
                ));
            }
        }
        config = config.with_tls(Some(tls));
    }
    if let Some(rf) = parts.take("rf") {
        config = config.with_replication(Replication::Everywhere(number(&rf, "replication")?));
    }
    if let Some(dcs) = parts.take("dc") {
        let mut per = Vec::new();
        for item in dcs.split(',') {
            let (dc, rf) = item
                .split_once(':')
                .ok_or_else(|| Error::invalid_input("replication", "dc must be dc1:3,dc2:3"))?;
            per.push((dc.trim().to_string(), number(rf, "replication")?));
        }
        config = config.with_replication(Replication::PerDatacenter(per));
    }
    if let Some(c) = parts.take("consistency") {
        config = config.with_consistency(consistency(&c)?);
    }
    if let Some(c) = parts.take("create_schema") {
        config = config.with_create_schema(flag(&c, "create_schema")?);
    }
    if let Some((k, _)) = parts.query.first() {
        return Err(Error::invalid_input(
            "url",
            format!(
                "unknown scylla:// parameter {k:?} (known: tls, ca, cert, key, rf, dc, \
                 consistency, create_schema)"
            ),
        ));
    }
    config.validate()?;
    Ok((StoreUrl::Scylla(config), parts))
}

#[cfg(feature = "scylla")]
mod scylla_consistency {
    use imstore_core::{Error, Result};
    use scylla_driver::statement::Consistency;

    /// A consistency level by its CQL name, any case (`local_quorum`, `QUORUM`, …).
    pub(super) fn parse(name: &str) -> Result<Consistency> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "any" => Consistency::Any,
            "one" => Consistency::One,
            "two" => Consistency::Two,
            "three" => Consistency::Three,
            "quorum" => Consistency::Quorum,
            "all" => Consistency::All,
            "local_quorum" => Consistency::LocalQuorum,
            "each_quorum" => Consistency::EachQuorum,
            "local_one" => Consistency::LocalOne,
            _ => {
                return Err(Error::invalid_input(
                    "consistency",
                    "must be one of any, one, two, three, quorum, all, local_quorum, \
                     each_quorum, local_one",
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imstore_core::ErrorKind;

    fn field(url: &str) -> Option<&'static str> {
        let e = StoreUrl::parse(url).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{url}: {e}");
        e.field()
    }

    #[test]
    fn memory_takes_nothing_else() {
        assert!(matches!(StoreUrl::parse("memory://"), Ok(StoreUrl::Memory)));
        assert!(matches!(StoreUrl::parse("memory:"), Ok(StoreUrl::Memory)));
        assert_eq!(field("memory://host"), Some("url"));
        assert_eq!(field("memory://?a=b"), Some("url"));
    }

    #[test]
    fn malformed_and_unknown_urls_are_invalid_input_on_url() {
        for bad in ["", "nonsense", "://x", "redis://h/0", "ftp://h", "a b://x"] {
            assert_eq!(field(bad), Some("url"), "{bad}");
        }
        let e = StoreUrl::parse("redis://h/0").unwrap_err();
        assert!(e.to_string().contains("memory://"), "{e}");
    }

    #[test]
    fn user_info_is_percent_decoded_and_never_quoted() {
        let p = Parts::split("x://al%40ce:p%3Aw@d@h1,h2/db?a=1&b=%20").unwrap();
        assert_eq!(p.user.as_deref(), Some("al@ce"));
        assert_eq!(p.password.as_deref(), Some("p:w@d"));
        assert_eq!(p.hosts, "h1,h2");
        assert_eq!(
            p.query,
            [("a".into(), "1".into()), ("b".into(), " ".into())]
        );
        let e = Parts::split("x://u:s3cret%zz@h/db")
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.field(), Some("password"));
        assert!(!e.to_string().contains("s3cret"));
    }

    #[cfg(not(feature = "postgres"))]
    #[test]
    fn a_backend_this_build_lacks_is_invalid_input_naming_the_feature() {
        let e = StoreUrl::parse("postgres://h/db").unwrap_err();
        assert_eq!(e.field(), Some("url"));
        assert!(e.to_string().contains("`postgres` cargo feature"), "{e}");
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_urls_take_schema_pool_and_migrate_and_pass_the_rest_on() {
        let StoreUrl::Postgres(c) = StoreUrl::parse_with(
            "postgresql://u:old@h:5432/db?schema=chat&max_connections=3&migrate=false&sslmode=require",
            &Credentials {
                user: None,
                password: Some("n3w p@ss".into()),
            },
        )
        .unwrap() else {
            panic!("not postgres")
        };
        assert_eq!(c.schema(), Some("chat"));
        assert_eq!(c.max_connections(), 3);
        assert!(!c.migrate_on_connect());
        assert_eq!(
            c.url(),
            "postgresql://u:n3w%20p%40ss@h:5432/db?sslmode=require"
        );
        assert_eq!(field("postgres://h/db?schema=Bad-Name"), Some("schema"));
        assert_eq!(
            field("postgres://h/db?max_connections=0"),
            Some("max_connections")
        );
        assert_eq!(
            field("postgres://h/db?max_connections=x"),
            Some("max_connections")
        );
        assert_eq!(field("postgres://h/db?migrate=maybe"), Some("migrate"));
        assert_eq!(field("mysql://h/db"), Some("url"));
    }

    #[cfg(all(feature = "mongodb", feature = "scylla", feature = "postgres"))]
    #[test]
    fn server_urls_may_leave_the_namespace_out_and_say_which_they_named() {
        let none = Credentials::default();
        let s = StoreUrl::parse_server("mongodb://u:p@h/?tls=true", &none).unwrap();
        assert_eq!(s.namespace, None);
        let StoreUrl::Mongodb(c) = &s.store else {
            panic!()
        };
        assert_eq!(c.url(), "mongodb://u:p@h/?tls=true");
        let s = StoreUrl::parse_server("scylla://h/ks?rf=1", &none).unwrap();
        assert_eq!(
            (s.namespace.as_deref(), s.params),
            (Some("ks"), vec!["rf".to_string()])
        );
        assert_eq!(
            StoreUrl::parse_server("scylla://h", &none)
                .unwrap()
                .namespace,
            None
        );
        let s = StoreUrl::parse_server("postgres://h/db?schema=prod", &none).unwrap();
        assert_eq!(s.namespace.as_deref(), Some("prod"));
        assert_eq!(
            StoreUrl::parse_server("postgres://h/db", &none)
                .unwrap()
                .namespace,
            None
        );
    }

    #[cfg(feature = "mongodb")]
    #[test]
    fn mongodb_urls_need_a_database() {
        let StoreUrl::Mongodb(c) =
            StoreUrl::parse("mongodb://u:p@h1,h2/chat?replicaSet=rs0&operation_timeout=5").unwrap()
        else {
            panic!("not mongodb")
        };
        assert_eq!(c.database(), "chat");
        assert_eq!(c.operation_timeout(), std::time::Duration::from_secs(5));
        assert_eq!(c.url(), "mongodb://u:p@h1,h2/chat?replicaSet=rs0");
        assert_eq!(field("mongodb://h/"), Some("database"));
        assert_eq!(field("mongodb://h/a.b"), Some("database"));
        assert_eq!(
            field("mongodb://h/db?operation_timeout=0"),
            Some("operation_timeout")
        );
    }

    #[cfg(feature = "scylla")]
    #[test]
    fn scylla_urls_carry_nodes_credentials_tls_and_replication() {
        let StoreUrl::Scylla(c) = StoreUrl::parse(
            "scylla://im:pw@10.0.0.1,10.0.0.2:19042,[::1]/chat?rf=1&consistency=quorum&tls=true",
        )
        .unwrap() else {
            panic!("not scylla")
        };
        assert_eq!(c.nodes(), ["10.0.0.1:9042", "10.0.0.2:19042", "[::1]:9042"]);
        assert_eq!(c.keyspace(), "chat");
        assert_eq!(c.credentials().unwrap().user(), "im");
        assert!(c.tls().is_some());
        assert_eq!(c.replication(), &imstore_scylla::Replication::Everywhere(1));
        assert_eq!(field("scylla://h/"), Some("keyspace"));
        assert_eq!(field("scylla://h/Bad"), Some("keyspace"));
        assert_eq!(field("scylla://h,/ks"), Some("nodes"));
        assert_eq!(field("scylla://h/ks?ca=/nonexistent.pem"), Some("tls"));
        assert_eq!(field("scylla://h/ks?cert=/a.pem"), Some("tls"));
        assert_eq!(field("scylla://h/ks?consistency=most"), Some("consistency"));
        assert_eq!(field("scylla://h/ks?rf=0"), Some("replication"));
        assert_eq!(field("scylla://h/ks?colour=blue"), Some("url"));
        assert_eq!(field("scylla://:pw@h/ks"), Some("credentials"));
    }
}
