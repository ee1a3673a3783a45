//! The pieces of `imstore-bench` shared by the bench command (`src/main.rs`) and the criterion
//! store benches (`benches/store.rs`): per-backend targets (imstore over a fresh namespace and the
//! raw-driver baseline over the same tables), the alternating pair harness, the measured paths
//! and the report writers.

pub mod backends;
pub mod harness;
pub mod purge;
pub mod report;
pub mod suite;
pub mod sync;
pub mod target;
pub mod wire;

use std::sync::Arc;

use crate::harness::R;
use crate::target::Target;

/// Milliseconds since the Unix epoch (the baseline's timestamps).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Every backend this build knows: name, server variable (None for memory), compiled in.
pub const KNOWN: &[(&str, Option<&str>, bool)] = &[
    ("memory", None, true),
    (
        "postgres",
        Some("IMSTORE_POSTGRES_URL"),
        cfg!(feature = "postgres"),
    ),
    (
        "mongodb",
        Some("IMSTORE_MONGODB_URL"),
        cfg!(feature = "mongodb"),
    ),
    (
        "scylla",
        Some("IMSTORE_SCYLLA_NODES"),
        cfg!(feature = "scylla"),
    ),
];

/// The backends to run: `list`, or every one compiled in; an error naming the fix when one is
/// unknown, not compiled in, or has no server variable set (never a silent skip).
pub fn select_backends(list: Option<Vec<String>>) -> Result<Vec<String>, String> {
    let selected: Vec<String> = match list {
        Some(list) => list,
        None => KNOWN
            .iter()
            .filter(|k| k.2)
            .map(|k| k.0.to_owned())
            .collect(),
    };
    for b in &selected {
        let Some(known) = KNOWN.iter().find(|k| k.0 == b) else {
            return Err(format!(
                "unknown backend {b:?} (known: memory, postgres, mongodb, scylla)"
            ));
        };
        if !known.2 {
            return Err(format!(
                "backend {b} is not compiled in: build with `--features {b}` (or leave it out of the backend list)"
            ));
        }
        if let Some(var) = known.1
            && std::env::var(var).map(|v| v.is_empty()).unwrap_or(true)
        {
            return Err(format!(
                "{var} is not set, so backend {b} cannot run.\n  Start the servers: \
                 `scripts/servers.sh start && source .servers/env`,\n  or leave {b} out: \
                 `--backends {}` (criterion benches: IMSTORE_BENCH_BACKENDS={0})",
                selected
                    .iter()
                    .filter(|s| *s != b)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
    }
    Ok(selected)
}

/// A fresh, recognisable namespace name: `bench_<prefix>_<pid>_<random>`.
fn namespace(prefix: &str) -> String {
    let r: u32 = rand::random();
    format!(
        "bench_{prefix}_{}_{:06x}",
        std::process::id(),
        r & 0xff_ffff
    )
}

/// The target of backend `name` over a fresh namespace on its server.
pub async fn connect(name: &str) -> R<Arc<dyn Target>> {
    Ok(match name {
        "memory" => Arc::new(backends::memory::MemoryTarget::default()),
        #[cfg(feature = "postgres")]
        "postgres" => {
            let url = std::env::var("IMSTORE_POSTGRES_URL")?;
            Arc::new(backends::postgres::PgTarget::connect(&url, namespace("pg")).await?)
        }
        #[cfg(feature = "mongodb")]
        "mongodb" => {
            let url = std::env::var("IMSTORE_MONGODB_URL")?;
            Arc::new(backends::mongodb::MongoTarget::connect(&url, namespace("mongo")).await?)
        }
        #[cfg(feature = "scylla")]
        "scylla" => {
            let nodes = std::env::var("IMSTORE_SCYLLA_NODES")?;
            Arc::new(backends::scylla::ScyllaTarget::connect(&nodes, namespace("scylla")).await?)
        }
        other => return Err(format!("backend {other} is not compiled in").into()),
    })
}

/// Drops the `bench_*` namespaces interrupted runs left on backend `name`'s server; their names.
pub async fn drop_leftovers(name: &str) -> R<Vec<String>> {
    match name {
        #[cfg(feature = "postgres")]
        "postgres" => {
            backends::postgres::drop_leftovers(&std::env::var("IMSTORE_POSTGRES_URL")?).await
        }
        #[cfg(feature = "mongodb")]
        "mongodb" => {
            backends::mongodb::drop_leftovers(&std::env::var("IMSTORE_MONGODB_URL")?).await
        }
        #[cfg(feature = "scylla")]
        "scylla" => backends::scylla::drop_leftovers(&std::env::var("IMSTORE_SCYLLA_NODES")?).await,
        _ => Ok(Vec::new()),
    }
}
