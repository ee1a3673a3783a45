//! The built `imstore` binary, run as a user runs it: help, the conformance suite on memory://
//! and on the PostgreSQL test server, bad URLs, and a purge whose dry run counts what the real
//! purge then removes.
//!
//! Server URLs come from the environment (`scripts/servers.sh start && source .servers/env`);
//! a test whose variable is missing fails, it never skips (under CI or not).

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use imstore::{
    Attachment, Authority, Clock, ConversationId, ManualClock, MessageStore, MessageStoreExt,
    MsgIdGenerator, NewMessage, RequestId, StoreSettings, UserId,
};
use imstore_conformance::{CASE_NAMES, StoreFactory, require_env};
use imstore_postgres::PostgresStore;
use imstore_postgres::testing::PgFactory;

fn imstore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imstore"))
        .args(args)
        // The settings come from these flags only, whatever the caller's environment says.
        .env_remove("IMSTORE_URL")
        .env_remove("IMSTORE_KEYS")
        .output()
        .expect("run the imstore binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn postgres_url() -> String {
    require_env("IMSTORE_POSTGRES_URL")
}

/// The suite passed, with one `ok` line per case and the libtest summary.
fn assert_every_case_passed(out: &Output) {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    for case in CASE_NAMES {
        assert!(
            stdout.contains(&format!("test {case} ... ok\n")),
            "{case} not reported ok:\n{stdout}"
        );
    }
    let summary = format!("test result: ok. {} passed; 0 failed;", CASE_NAMES.len());
    assert!(stdout.contains(&summary), "{stdout}");
}

#[test]
fn help_of_the_command_and_of_every_subcommand_exits_zero() {
    let top = imstore(&["--help"]);
    assert!(top.status.success());
    for sub in ["migrate", "purge", "rekey", "conformance", "check", "stats"] {
        assert!(text(&top.stdout).contains(sub), "{sub} missing from --help");
        let out = imstore(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help: {:?}", out.status);
        assert!(text(&out.stdout).contains("Usage: imstore"), "{sub}");
    }
}

#[test]
fn conformance_on_memory_passes_every_case() {
    let out = imstore(&["conformance", "--url", "memory://"]);
    assert_every_case_passed(&out);
}

#[test]
fn conformance_on_the_postgres_server_passes_every_case() {
    let out = imstore(&["conformance", "--url", &postgres_url()]);
    assert_every_case_passed(&out);
}

#[test]
fn a_bad_url_exits_non_zero_with_a_message_naming_the_problem() {
    for (url, says) in [
        ("redis://h/0", "scheme \"redis\" names no backend"),
        ("nonsense", "is not a URL"),
        ("scylla://h,/ks", "field `nodes`"),
        (
            "postgres://h/db?max_connections=0",
            "field `max_connections`",
        ),
    ] {
        let out = imstore(&["conformance", "--url", url]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains(says), "{url}: {stderr}");
        assert!(!text(&out.stdout).contains("test result"), "{url}");
    }
    let out = imstore(&["stats"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("pass --url or set IMSTORE_URL"));
}

#[test]
fn conformance_refuses_a_namespace_it_did_not_create() {
    let url = format!("{}?schema=public", postgres_url());
    let out = imstore(&["conformance", "--url", &url]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("runs only in namespaces it creates"),
        "{}",
        text(&out.stderr)
    );
    let out = imstore(&["conformance", "--url", "mongodb://127.0.0.1:1/production"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("\"production\""));
}

/// The numbers of `would remove N messages and M change events` / `removed N messages and M
/// change events`.
fn removed(line_start: &str, output: &str) -> (u64, u64) {
    let line = output
        .lines()
        .find_map(|l| l.split_once(line_start).map(|(_, rest)| rest.to_string()))
        .unwrap_or_else(|| panic!("no {line_start:?} in:\n{output}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn purge_dry_run_counts_what_the_real_purge_then_removes() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let factory = PgFactory::new(postgres_url());
    let schema = runtime.block_on(factory.create_namespace());
    // The messages were recalled and deleted 40 days ago, in store time: past the default
    // 30-day retention of the command, which runs on the system clock.
    let clock = ManualClock::starting_now();
    clock.set(clock.now().saturating_sub(Duration::from_secs(40 * 86_400)));
    let expected = runtime.block_on(async {
        let settings = StoreSettings {
            clock: Arc::new(clock.clone()),
            ..StoreSettings::default()
        };
        let store: PostgresStore = factory.open(&schema, settings).await;
        let ids = MsgIdGenerator::new(1, Arc::new(clock.clone())).unwrap();
        let alice = UserId::new("alice").unwrap();
        let mut recalled = 0;
        for (c, held) in [("open", false), ("held", true)] {
            let conv = ConversationId::new(c).unwrap();
            for i in 0..12u32 {
                let mut m =
                    NewMessage::text(ids.next_id().unwrap(), conv.clone(), alice.clone(), "x");
                if i % 4 == 0 {
                    m.attachment = Some(Attachment {
                        key: format!("blob/{c}/{i}"),
                        size: 1,
                        mime: "image/png".into(),
                    });
                }
                store.insert(m.clone()).await.unwrap();
                let rid = RequestId::new(format!("{c}-{i}")).unwrap();
                match i % 3 {
                    0 => {
                        store
                            .recall(&alice, Authority::Member, &conv, m.msg_id, clock.now(), rid)
                            .await
                            .unwrap();
                        recalled += u64::from(!held);
                    }
                    1 => {
                        store
                            .delete(&alice, Authority::Member, &conv, m.msg_id, clock.now(), rid)
                            .await
                            .unwrap();
                        recalled += u64::from(!held);
                    }
                    _ => {}
                }
            }
            if held {
                store.set_legal_hold(&conv, true).await.unwrap();
            }
        }
        recalled
    });
    let url = format!("{}?schema={schema}", postgres_url());
    let dry = imstore(&["purge", "--dry-run", "--url", &url]);
    let dry_out = text(&dry.stdout);
    assert!(dry.status.success(), "{dry_out}");
    let (would_messages, would_events) = removed("would remove ", &dry_out);
    assert_eq!(would_messages, expected, "{dry_out}");
    assert!(
        dry_out.contains(&format!("due but under legal hold:      {expected}")),
        "{dry_out}"
    );
    // The dry run removed nothing: a second one counts the same.
    let again = imstore(&["purge", "--dry-run", "--url", &url]);
    assert_eq!(
        removed("would remove ", &text(&again.stdout)),
        (would_messages, would_events)
    );

    let keys = std::env::temp_dir().join(format!("{schema}.keys.jsonl"));
    let real = imstore(&[
        "purge",
        "--batch",
        "3",
        "--url",
        &url,
        "--released-keys",
        keys.to_str().unwrap(),
    ]);
    let real_out = text(&real.stdout);
    assert!(real.status.success(), "{real_out}{}", text(&real.stderr));
    assert_eq!(
        removed("removed ", &real_out),
        (would_messages, would_events),
        "{real_out}"
    );
    let released = std::fs::read_to_string(&keys).unwrap();
    std::fs::remove_file(&keys).unwrap();
    // Of the open conversation's attachments (messages 0, 4, 8), those on recalled or deleted
    // messages (0 and 4; 8 is still normal) are released.
    let mut lines: Vec<&str> = released.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            r#"{"released_attachment_key":"blob/open/0"}"#,
            r#"{"released_attachment_key":"blob/open/4"}"#,
        ],
        "{released}"
    );
    let after = imstore(&["purge", "--dry-run", "--url", &url]);
    assert_eq!(removed("would remove ", &text(&after.stdout)), (0, 0));
    runtime.block_on(factory.drop_namespace(&schema));
}

#[test]
fn migrate_creates_the_schema_once_and_its_dry_run_changes_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let factory = PgFactory::new(postgres_url());
    // The factory's prefix, so a crashed run's schema is swept by the next test run.
    let schema = format!("{}_cli_{}", PgFactory::DEFAULT_PREFIX, std::process::id());
    runtime.block_on(factory.drop_schema(&schema));
    let url = format!("{}?schema={schema}", postgres_url());
    let run = |args: &[&str]| {
        let out = imstore(args);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {stdout}{}",
            text(&out.stderr)
        );
        stdout
    };
    let migrations = imstore_postgres::MIGRATOR.iter().count();
    for _ in 0..2 {
        let dry = run(&["migrate", "--dry-run", "--url", &url]);
        assert!(
            dry.contains(&format!("would create schema {schema}")),
            "{dry}"
        );
        assert_eq!(
            dry.matches("would apply migration").count(),
            migrations,
            "{dry}"
        );
    }
    let first = run(&["migrate", "--url", &url]);
    assert_eq!(
        first.matches("apply migration").count(),
        migrations,
        "{first}"
    );
    for args in [
        &["migrate", "--url", &url][..],
        &["migrate", "--dry-run", "--url", &url][..],
    ] {
        let again = run(args);
        assert!(!again.contains("apply migration"), "{again}");
        assert!(
            again.contains(&format!(
                "schema {schema} is up to date ({migrations} migrations applied)"
            )),
            "{again}"
        );
    }
    runtime.block_on(factory.drop_schema(&schema));
}

#[test]
fn check_on_memory_finds_both_histories_linearizable() {
    let out = imstore(&["check", "--url", "memory://", "--ops", "400"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        stdout
            .matches(": linearizable, and every device's feed")
            .count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("verdict: the store behaved as the contract's state machine"));
}

#[test]
fn rekey_moves_every_message_to_the_active_key_and_removes_its_state_file() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let factory = PgFactory::new(postgres_url());
    let schema = runtime.block_on(factory.create_namespace());
    let (old, new) = ([7u8; 32], [9u8; 32]);
    runtime.block_on(async {
        let codec = imstore::ContentCodec::default().with_encryption(imstore::KeyRing::new(
            imstore::EncryptionKey::new(imstore::KeyId(1), old),
        ));
        let settings = StoreSettings {
            codec,
            ..StoreSettings::default()
        };
        let store: PostgresStore = factory.open(&schema, settings.clone()).await;
        let ids = MsgIdGenerator::new(2, settings.clock.clone()).unwrap();
        let conv = ConversationId::new("c").unwrap();
        for _ in 0..7 {
            let m = NewMessage::text(
                ids.next_id().unwrap(),
                conv.clone(),
                UserId::new("a").unwrap(),
                "hi",
            );
            store.insert(m).await.unwrap();
        }
    });
    let hex = |k: [u8; 32]| k.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let keys = format!("1={},2={}", hex(old), hex(new));
    let state = std::env::temp_dir().join(format!("{schema}.rekey"));
    let url = format!("{}?schema={schema}", postgres_url());
    let rekey = |extra: &[&str]| {
        let mut args = vec![
            "rekey",
            "--url",
            &url,
            "--key",
            &keys,
            "--batch",
            "3",
            "--state",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        imstore(&args)
    };
    // One batch, then stop: the state file says where the scan got to.
    let first = rekey(&["--max-batches", "1"]);
    let first_out = text(&first.stdout);
    assert!(first.status.success(), "{first_out}{}", text(&first.stderr));
    assert!(
        first_out.contains("scanned 3, rewritten under key 2 3,"),
        "{first_out}"
    );
    assert!(first_out.contains("stopped after 1 batches"), "{first_out}");
    assert!(state.exists());
    // The next run resumes there: it scans the other four only.
    let out = rekey(&[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("rekey: resuming from"), "{stdout}");
    assert!(
        stdout.contains("scanned 4, rewritten under key 2 4,"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 messages still need a key other than 2"),
        "{stdout}"
    );
    assert!(!state.exists(), "the state file outlived a complete scan");
    // Nothing is left to do: a second run rewrites nothing.
    let again = imstore(&[
        "rekey",
        "--url",
        &url,
        "--key",
        &keys,
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(
        text(&again.stdout).contains("rewritten under key 2 0,"),
        "{}",
        text(&again.stdout)
    );
    // Without the ring the job cannot run, and says what it needs.
    let bare = imstore(&["rekey", "--url", &url]);
    assert_eq!(bare.status.code(), Some(2));
    assert!(text(&bare.stderr).contains("rekey needs the key ring"));
    runtime.block_on(factory.drop_namespace(&schema));
}

#[test]
fn a_failing_case_is_reported_failed_with_its_message_and_exit_status_one() {
    // Nothing listens on port 1: the case cannot get its server and must not pass.
    let out = imstore(&[
        "conformance",
        "--url",
        "postgres://u:p@127.0.0.1:1/db",
        "--filter",
        "insert_then_get_returns_the_message",
        "--case-timeout",
        "2s",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("test insert_then_get_returns_the_message ... FAILED"),
        "{stdout}"
    );
    assert!(
        stdout.contains("---- insert_then_get_returns_the_message stdout ----\ntimed out after 2s"),
        "{stdout}"
    );
    let summary = format!(
        "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; {} filtered out;",
        CASE_NAMES.len() - 1
    );
    assert!(stdout.contains(&summary), "{stdout}");
    assert!(text(&out.stderr).contains("1 of 1 conformance cases failed on postgres"));
}
