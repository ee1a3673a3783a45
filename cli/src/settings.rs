//! The settings every command shares (URL, credentials, keys, policy), from flags or the
//! environment, and the parsers of their values.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use imstore::url::Credentials;
use imstore::{
    ContentCodec, EncryptionKey, KeyId, KeyRing, Policy, StoreSettings, StoreUrl, SystemClock,
};

use crate::Failure;

/// Flags of every command; each has an environment variable, so that secrets stay off the
/// command line.
#[derive(Args, Debug)]
pub struct Global {
    /// The store: memory://, postgres://user@host/db?schema=chat, mongodb://host/db,
    /// scylla://host1,host2/keyspace (credentials and TLS as the URL says).
    #[arg(long, env = "IMSTORE_URL", global = true, hide_env_values = true)]
    pub url: Option<String>,
    /// The user name, in place of the URL's.
    #[arg(long, env = "IMSTORE_USER", global = true)]
    pub user: Option<String>,
    /// The password, in place of the URL's (prefer the environment variable).
    #[arg(long, env = "IMSTORE_PASSWORD", global = true, hide_env_values = true)]
    pub password: Option<String>,
    /// Content keys as ID=HEX (64 hex digits), comma-separated or repeated; the highest id is
    /// the active key unless --active-key says otherwise. Without keys content is not encrypted.
    #[arg(
        long = "key",
        env = "IMSTORE_KEYS",
        global = true,
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = parse_key
    )]
    pub keys: Vec<(u32, [u8; 32])>,
    /// The id of the key new content is sealed with.
    #[arg(long, env = "IMSTORE_ACTIVE_KEY", global = true)]
    pub active_key: Option<u32>,
    /// How long recalled and deleted messages are kept before the purge (30d by default).
    #[arg(long, env = "IMSTORE_RETENTION", global = true, value_parser = parse_duration)]
    pub retention: Option<Duration>,
    /// How long a recall may be restored (7d by default; shorter than the retention).
    #[arg(long, env = "IMSTORE_RESTORE_WINDOW", global = true, value_parser = parse_duration)]
    pub restore_window: Option<Duration>,
    /// Purge every message older than this, whatever its status (none by default).
    #[arg(long, env = "IMSTORE_HISTORY_LIMIT", global = true, value_parser = parse_duration)]
    pub history_limit: Option<Duration>,
}

impl Global {
    /// The credentials given apart from the URL.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            user: self.user.clone(),
            password: self.password.clone(),
        }
    }

    /// The URL, or a usage error saying how to give one.
    pub fn url(&self) -> Result<&str, Failure> {
        self.url.as_deref().ok_or_else(|| {
            Failure::Usage(format!(
                "no store URL: pass --url or set IMSTORE_URL (this build opens {})",
                imstore::url::supported_schemes().join(", ")
            ))
        })
    }

    /// The parsed store URL.
    pub fn store_url(&self) -> Result<StoreUrl, Failure> {
        Ok(StoreUrl::parse_with(self.url()?, &self.credentials())?)
    }

    /// The policy the flags describe (the defaults for what they leave out).
    pub fn policy(&self) -> Result<Policy, Failure> {
        let mut b = Policy::builder();
        if let Some(d) = self.retention {
            b = b.retention(d);
        }
        if let Some(d) = self.restore_window {
            b = b.restore_window(d);
        }
        if self.history_limit.is_some() {
            b = b.history_limit(self.history_limit);
        }
        Ok(b.build()?)
    }

    /// The content codec: compression, and encryption under the key ring when keys are given.
    pub fn codec(&self) -> Result<ContentCodec, Failure> {
        let Some(max) = self.keys.iter().map(|(id, _)| *id).max() else {
            if self.active_key.is_some() {
                return Err(Failure::Usage(
                    "--active-key without any --key (IMSTORE_KEYS)".into(),
                ));
            }
            return Ok(ContentCodec::default());
        };
        let active = self.active_key.unwrap_or(max);
        let key = |id: u32| {
            self.keys
                .iter()
                .find(|(k, _)| *k == id)
                .map(|(k, bytes)| EncryptionKey::new(KeyId(*k), *bytes))
        };
        let mut ring = KeyRing::new(key(active).ok_or_else(|| {
            Failure::Usage(format!("--active-key {active} is not among the --key ids"))
        })?);
        for (id, _) in &self.keys {
            if *id != active {
                ring = ring.with_old_key(key(*id).expect("listed"))?;
            }
        }
        Ok(ContentCodec::default().with_encryption(ring))
    }

    /// The store settings: the policy, the codec and the system clock.
    pub fn settings(&self) -> Result<StoreSettings, Failure> {
        Ok(StoreSettings {
            policy: self.policy()?,
            codec: self.codec()?,
            clock: Arc::new(SystemClock),
        })
    }
}

/// `ID=HEX`: a key id and 32 bytes as 64 hex digits.
fn parse_key(s: &str) -> Result<(u32, [u8; 32]), String> {
    let (id, hex) = s
        .trim()
        .split_once('=')
        .ok_or("a key is ID=HEX (64 hex digits)")?;
    let id: u32 = id
        .trim()
        .parse()
        .map_err(|_| "a key id is a number".to_string())?;
    let hex = hex.trim();
    if hex.len() != 64 {
        return Err(format!(
            "key {id}: 64 hex digits (32 bytes), not {}",
            hex.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("key {id}: not hexadecimal"))?;
    }
    Ok((id, out))
}

/// A duration: a number and a unit (`500ms`, `90s`, `15m`, `12h`, `30d`, `2w`); a bare number
/// is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 90s, 15m, 12h, 30d)"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" | "mins" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        "w" | "week" | "weeks" => 7.0 * 86_400.0,
        other => return Err(format!("unknown unit {other:?} (ms, s, m, h, d, w)")),
    };
    let secs = n * scale;
    if !(secs.is_finite() && secs > 0.0 && secs < 1e11) {
        return Err(format!("{s:?} must be more than zero"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["", "0", "x", "5 parsecs", "-3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_are_an_id_and_64_hex_digits() {
        let (id, bytes) = parse_key(&format!("7={}", "ab".repeat(32))).unwrap();
        assert_eq!((id, bytes[0]), (7, 0xab));
        for bad in ["7", "x=00", &format!("7={}", "zz".repeat(32)), "7=abcd"] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
    }
}
