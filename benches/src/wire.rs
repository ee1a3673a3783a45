//! Counting round trips on the wire: a loopback TCP proxy in front of a server that forwards
//! every byte unchanged and counts the requests the client sends, by parsing the client's side
//! of the protocol (PostgreSQL: `Sync` and simple `Query` messages, each answered by one
//! `ReadyForQuery`; CQL v4: `QUERY`, `PREPARE`, `EXECUTE` and `BATCH` frames).
//!
//! Used only by the handles that count a path's round trips, never by the ones that time it: the
//! extra hop costs every request the same few microseconds, which would favour the side with
//! fewer requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::R;

/// The protocol whose requests a [`CountingProxy`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// PostgreSQL frontend messages (the client must not negotiate TLS: `sslmode=disable`).
    Postgres,
    /// CQL native protocol v4 (frame headers are never compressed, so compression is fine).
    Cql,
}

/// A proxy on `127.0.0.1:<port>` to one upstream address; counts requests while it lives.
pub struct CountingProxy {
    /// The address to connect to instead of the server.
    pub addr: SocketAddr,
    /// Requests sent by all the clients of the proxy so far.
    pub requests: Arc<AtomicU64>,
    /// Frames the parser could not recognise (a count is wrong if this is not zero).
    pub unparsed: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl CountingProxy {
    /// Starts a proxy to `upstream` (a `host:port`).
    pub async fn start(upstream: &str, protocol: Protocol) -> R<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let unparsed = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_owned();
        let (req, unp) = (requests.clone(), unparsed.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, req, unp) = (upstream.clone(), req.clone(), unp.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        let _ = pipe(client, server, protocol, req, unp).await;
                    }
                });
            }
        });
        Ok(CountingProxy {
            addr,
            requests,
            unparsed,
            accept,
        })
    }

    /// Requests counted so far.
    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Forwards both directions; parses what the client sends.
async fn pipe(
    client: TcpStream,
    server: TcpStream,
    protocol: Protocol,
    requests: Arc<AtomicU64>,
    unparsed: Arc<AtomicU64>,
) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    });
    let mut parser = Parser::new(protocol);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = cr.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        sw.write_all(&buf[..n]).await?;
        let (r, u) = parser.feed(&buf[..n]);
        requests.fetch_add(r, Ordering::Relaxed);
        unparsed.fetch_add(u, Ordering::Relaxed);
    }
    let _ = sw.shutdown().await;
    down.abort();
    Ok(())
}

/// The client side of one connection, parsed as it arrives (messages may span reads).
struct Parser {
    protocol: Protocol,
    /// PostgreSQL: still in the untyped startup phase (SSL/GSS requests, the startup message).
    startup: bool,
    pending: Vec<u8>,
    broken: bool,
}

/// PostgreSQL's SSLRequest and GSSENCRequest codes: the startup message follows them.
const PG_SSL: u32 = 80_877_103;
const PG_GSS: u32 = 80_877_104;

impl Parser {
    fn new(protocol: Protocol) -> Self {
        Parser {
            protocol,
            startup: true,
            pending: Vec::new(),
            broken: false,
        }
    }

    /// Consumes `bytes`; returns (requests completed, frames not understood).
    fn feed(&mut self, bytes: &[u8]) -> (u64, u64) {
        if self.broken {
            return (0, 0);
        }
        self.pending.extend_from_slice(bytes);
        let (mut requests, mut unparsed) = (0, 0);
        let mut at = 0usize;
        loop {
            let rest = &self.pending[at..];
            let used = match self.protocol {
                Protocol::Postgres if self.startup => {
                    if rest.len() < 8 {
                        break;
                    }
                    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    if len < 8 {
                        self.broken = true;
                        unparsed += 1;
                        break;
                    }
                    if rest.len() < len {
                        break;
                    }
                    let code = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
                    if code != PG_SSL && code != PG_GSS {
                        self.startup = false;
                    }
                    len
                }
                Protocol::Postgres => {
                    if rest.len() < 5 {
                        break;
                    }
                    let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                    if len < 4 {
                        self.broken = true;
                        unparsed += 1;
                        break;
                    }
                    if rest.len() < 1 + len {
                        break;
                    }
                    // Sync ends an extended-protocol exchange, Query is a simple one: each gets
                    // one ReadyForQuery, so each is one round trip.
                    if rest[0] == b'S' || rest[0] == b'Q' {
                        requests += 1;
                    }
                    1 + len
                }
                Protocol::Cql => {
                    if rest.len() < 9 {
                        break;
                    }
                    if rest[0] & 0x7f != 4 {
                        // Not v4: the frame layout differs; stop counting rather than guess.
                        self.broken = true;
                        unparsed += 1;
                        break;
                    }
                    let len = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) as usize;
                    if rest.len() < 9 + len {
                        break;
                    }
                    // QUERY, PREPARE, EXECUTE, BATCH; not STARTUP, OPTIONS, REGISTER, AUTH.
                    if matches!(rest[4], 0x07 | 0x09 | 0x0A | 0x0D) {
                        requests += 1;
                    }
                    9 + len
                }
            };
            at += used;
        }
        self.pending.drain(..at);
        (requests, unparsed)
    }
}

/// `url` with its `host:port` replaced by `addr` (a PostgreSQL URL `postgres://[user[:pw]@]host[:port][/db][?params]`),
/// and `sslmode=disable` so that the proxy can read the messages.
pub fn pg_url_via(url: &str, addr: SocketAddr) -> R<String> {
    let (scheme, rest) = url.split_once("://").ok_or("a postgres:// URL")?;
    let (auth, hostpart) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let cut = hostpart.find(['/', '?']).unwrap_or(hostpart.len());
    let tail = &hostpart[cut..];
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q)),
        None => (tail.to_owned(), None),
    };
    let mut params: Vec<String> = query
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty() && !p.starts_with("sslmode="))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    params.push("sslmode=disable".into());
    Ok(format!(
        "{scheme}://{auth}{addr}{path}?{}",
        params.join("&")
    ))
}

/// The `host:port` of a PostgreSQL URL (port 5432 when it names none).
pub fn pg_host_port(url: &str) -> R<String> {
    let (_, rest) = url.split_once("://").ok_or("a postgres:// URL")?;
    let hostpart = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let cut = hostpart.find(['/', '?']).unwrap_or(hostpart.len());
    let hp = &hostpart[..cut];
    Ok(if hp.contains(':') {
        hp.to_owned()
    } else {
        format!("{hp}:5432")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg_msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn postgres_counts_syncs_and_queries_across_split_reads() {
        let mut p = Parser::new(Protocol::Postgres);
        let mut bytes = Vec::new();
        // SSLRequest, then the startup message, then Parse/Bind/Execute/Sync twice and a Query.
        bytes.extend_from_slice(&8u32.to_be_bytes());
        bytes.extend_from_slice(&PG_SSL.to_be_bytes());
        let startup = b"\x00\x03\x00\x00user\x00x\x00\x00";
        bytes.extend_from_slice(&((startup.len() + 4) as u32).to_be_bytes());
        bytes.extend_from_slice(startup);
        for _ in 0..2 {
            bytes.extend(pg_msg(b'P', b"\x00SELECT 1\x00\x00\x00"));
            bytes.extend(pg_msg(b'B', b"\x00\x00\x00\x00\x00\x00\x00\x00"));
            bytes.extend(pg_msg(b'E', b"\x00\x00\x00\x00\x00"));
            bytes.extend(pg_msg(b'S', b""));
        }
        bytes.extend(pg_msg(b'Q', b"SELECT 1\x00"));
        // An 'S' byte inside a body is not a Sync.
        bytes.extend(pg_msg(b'B', b"SSSS"));
        let mut total = 0;
        for chunk in bytes.chunks(3) {
            let (r, u) = p.feed(chunk);
            assert_eq!(u, 0);
            total += r;
        }
        assert_eq!(total, 3);
    }

    #[test]
    fn cql_counts_request_frames_not_startup_or_options() {
        let frame = |op: u8, body: &[u8]| {
            let mut v = vec![0x04, 0, 0, 1, op];
            v.extend_from_slice(&(body.len() as u32).to_be_bytes());
            v.extend_from_slice(body);
            v
        };
        let mut bytes = frame(0x05, b"");
        bytes.extend(frame(0x01, b"\x00\x01\x00\x0bCQL_VERSION"));
        bytes.extend(frame(0x0A, &[0x0A; 40]));
        bytes.extend(frame(0x07, b"select"));
        bytes.extend(frame(0x0D, b""));
        let mut p = Parser::new(Protocol::Cql);
        let total: u64 = bytes.chunks(7).map(|c| p.feed(c).0).sum();
        assert_eq!(total, 3);
        let mut v5 = Parser::new(Protocol::Cql);
        assert_eq!(v5.feed(&[0x05, 0, 0, 0, 0x07, 0, 0, 0, 0]), (0, 1));
    }

    #[test]
    fn pg_url_is_redirected_without_tls() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            pg_url_via("postgres://u:p@db.local:5433/im?sslmode=require&x=1", addr).unwrap(),
            "postgres://u:p@127.0.0.1:4000/im?x=1&sslmode=disable"
        );
        assert_eq!(
            pg_url_via("postgresql://localhost/im", addr).unwrap(),
            "postgresql://127.0.0.1:4000/im?sslmode=disable"
        );
        assert_eq!(
            pg_host_port("postgres://u:p@db.local:5433/im").unwrap(),
            "db.local:5433"
        );
        assert_eq!(pg_host_port("postgres://h/im").unwrap(), "h:5432");
    }
}
