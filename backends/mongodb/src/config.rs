//! How a [`crate::MongoStore`] connects, and how patient it is with unfinished writes.

use std::time::Duration;

use mongodb::options::WriteConcern;

/// Connection and layout settings of a MongoDB store.
///
/// Built with [`MongoConfig::new`] and adjusted with the `with_*` methods; every field has a safe
/// default for production (majority write concern, 5 s takeover delay).
#[derive(Clone, Debug)]
pub struct MongoConfig {
    /// The connection string (`mongodb://host:port/...`).
    pub url: String,
    /// The database holding the store's collections.
    pub database: String,
    /// The write concern of every write; `w: "majority"` unless changed.
    pub write_concern: WriteConcern,
    /// How long (wall-clock) an unfinished transition or purge record is left to the process that
    /// wrote it before another process completes it (only matters after a process died between
    /// the commit and the follow-up writes).
    pub takeover_after: Duration,
    /// How many times a compare-and-set loop retries before giving up with `Unavailable`.
    pub max_cas_attempts: u32,
}

impl MongoConfig {
    /// Settings for `database` on the deployment at `url`, with the defaults above.
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> Self {
        MongoConfig {
            url: url.into(),
            database: database.into(),
            write_concern: WriteConcern::majority(),
            takeover_after: Duration::from_secs(5),
            max_cas_attempts: 2_000,
        }
    }

    /// The same settings with another write concern (e.g. `WriteConcern::nodes(1)` on a test box).
    pub fn with_write_concern(mut self, write_concern: WriteConcern) -> Self {
        self.write_concern = write_concern;
        self
    }

    /// The same settings with another takeover delay for unfinished records.
    pub fn with_takeover_after(mut self, delay: Duration) -> Self {
        self.takeover_after = delay;
        self
    }
}
