//! Shared helpers for Tidemark's integration, crash and chaos tests against a real broker.
//!
//! The broker comes from `TIDEMARK_TEST_BROKERS` (set by `scripts/test`, which starts tansu).
//! Under `CI=true` a missing broker is a failure, never a silent skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::util::Timeout;
use tidemark_tools::produce::send_retrying;

pub mod s3_proxy;
pub use s3_proxy::{FaultPlan, S3Fault, S3FaultProxy};

/// The environment variable naming the test broker's bootstrap address.
pub const BROKERS_ENV: &str = "TIDEMARK_TEST_BROKERS";

/// The broker to test against; `None` (with a loud note) only outside CI.
///
/// # Panics
/// When no broker is configured and `CI=true`.
pub fn broker() -> Option<String> {
    match std::env::var(BROKERS_ENV) {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{BROKERS_ENV} is not set but CI=true: broker tests must run in CI (use scripts/test)");
            }
            eprintln!("SKIPPED: {BROKERS_ENV} is not set; run scripts/test to start tansu and run broker tests");
            None
        }
    }
}

/// The environment variable naming a second broker, another Kafka cluster (the secondary
/// region of the failover tests); `scripts/test` starts it next to the first.
pub const SECONDARY_BROKERS_ENV: &str = "TIDEMARK_TEST_BROKERS_SECONDARY";

/// The primary and the secondary broker (two clusters) to test a failover against; `None`
/// (with a loud note) only outside CI.
///
/// # Panics
/// When either is not configured and `CI=true`.
pub fn two_brokers() -> Option<(String, String)> {
    let primary = broker()?;
    match std::env::var(SECONDARY_BROKERS_ENV) {
        Ok(b) if !b.trim().is_empty() => Some((primary, b)),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{SECONDARY_BROKERS_ENV} is not set but CI=true: the failover tests need two brokers (use scripts/test)");
            }
            eprintln!("SKIPPED: {SECONDARY_BROKERS_ENV} is not set; run scripts/test to start two tansu brokers");
            None
        }
    }
}

/// The environment variable naming the S3-compatible server (`http://127.0.0.1:PORT`) that
/// `scripts/test` starts (moto), with its buckets in [`S3_BUCKETS_ENV`].
pub const S3_ENDPOINT_ENV: &str = "TIDEMARK_TEST_S3_ENDPOINT";
/// The environment variable listing the test buckets (space-separated; the first is the
/// primary region, the second another "region").
pub const S3_BUCKETS_ENV: &str = "TIDEMARK_TEST_S3_BUCKETS";

/// The test server's access key id (any works; tests check it is never logged).
pub const TEST_ACCESS_KEY_ID: &str = "AKIATIDEMARKTESTKEY";
/// The test server's secret key (tests check it is never logged).
pub const TEST_SECRET_ACCESS_KEY: &str = "tidemark-secret-that-must-never-be-logged";

/// The S3-compatible test server: where it is and the AWS settings a process needs to reach it.
#[derive(Debug, Clone)]
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The test buckets (at least two: two "regions").
    pub buckets: Vec<String>,
}

impl S3Server {
    /// The AWS environment of a process that talks to this server (plain HTTP, test
    /// credentials; object_store's requests are path-style by default).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Sets [`Self::env`] on `cmd`.
    pub fn apply(&self, cmd: &mut Command) {
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
    }

    /// A fresh `s3://` table URI in bucket `bucket_index` (unique per call: tests share the
    /// server and its buckets).
    pub fn table_uri(&self, bucket_index: usize, name: &str) -> String {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        format!(
            "s3://{}/{name}-{}-{nanos}-{n}",
            self.buckets[bucket_index],
            std::process::id()
        )
    }

    /// Sets [`Self::env`] on this process (for tests that open S3 tables in-process; the values
    /// are the same for every test, so concurrent tests agree).
    ///
    /// Done once per test process (the first caller's values; every caller's are the same), so
    /// tests running in parallel do not keep rewriting the environment others read.
    pub fn set_process_env(&self) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            for (k, v) in self.env() {
                std::env::set_var(k, v);
            }
        });
    }
}

/// The S3-compatible server to test against; `None` (with a loud note) only outside CI.
///
/// # Panics
/// When it is not configured and `CI=true`.
pub fn s3_server() -> Option<S3Server> {
    let endpoint = std::env::var(S3_ENDPOINT_ENV)
        .ok()
        .filter(|e| !e.trim().is_empty());
    let buckets: Vec<String> = std::env::var(S3_BUCKETS_ENV)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    match endpoint {
        Some(endpoint) if buckets.len() >= 2 => Some(S3Server { endpoint, buckets }),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{S3_ENDPOINT_ENV} / {S3_BUCKETS_ENV} are not set but CI=true: the object-storage tests need the S3-compatible server (use scripts/test)");
            }
            eprintln!("SKIPPED: {S3_ENDPOINT_ENV} is not set; run scripts/test to start the S3-compatible server (moto)");
            None
        }
    }
}

/// Python 3 with deltalake, duckdb and pyarrow (the independent readers of the tables);
/// `false` (skip, with a loud note) only outside CI.
///
/// # Panics
/// When they are missing and `CI=true`.
pub fn have_python() -> bool {
    let have = std::process::Command::new("python3")
        .args(["-c", "import deltalake, duckdb, pyarrow"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "python deltalake/duckdb missing under CI=true (scripts/setup installs them)"
        );
        eprintln!("SKIPPED: python3 deltalake/duckdb not installed; run scripts/setup");
    }
    have
}

/// Held by the tests that delete topics, the chaos test and the vacuum proof, so they never
/// overlap under `cargo test` (one process, tests on threads): with tansu 0.6 (SQLite engine),
/// produce requests were seen to stall past librdkafka's timeouts while a topic was deleted
/// during the chaos test's heavy produce load (both tests then failed, each passing alone).
/// Under `scripts/test`'s nextest (a process per test) this in-process lock holds nothing: the
/// topic-deleting tests run alone, after all others, in their own profile
/// (`.config/nextest.toml`), and the chaos test and the vacuum proof run side by side.
pub async fn broker_exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    EXCLUSIVE.lock().await
}

/// A topic name unique to this test run.
pub fn unique_topic(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Creates `topic` with `partitions` partitions and waits until it is usable. A request that
/// times out (a broker busy with other tests' topics) is sent again, up to three times; a topic
/// that a timed-out request did create counts as created.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(30)));
    for attempt in 1..=3 {
        let results = match admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &options,
            )
            .await
        {
            Ok(results) => results,
            Err(e) if attempt < 3 => {
                eprintln!("create_topics {topic}: {e} (attempt {attempt}, retrying)");
                continue;
            }
            Err(e) => panic!("create_topics request for {topic}: {e}"),
        };
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) if attempt > 1 => {}
                Err(e) => panic!("topic {topic} not created: {e:?}"),
            }
        }
        return;
    }
}

/// Produces `n` messages round-robin over `partitions`, the i-th with value `value(i)`;
/// returns the end offset of each partition (offsets start at 0).
pub fn produce(
    brokers: &str,
    topic: &str,
    partitions: i32,
    n: u64,
    value: impl Fn(u64) -> Vec<u8>,
) -> BTreeMap<(String, i32), i64> {
    produce_range(brokers, topic, partitions, 0..n, value)
}

/// Like [`produce`] for messages `range` (message i goes to partition `i % partitions`);
/// returns how many went to each partition.
pub fn produce_range(
    brokers: &str,
    topic: &str,
    partitions: i32,
    range: std::ops::Range<u64>,
    value: impl Fn(u64) -> Vec<u8>,
) -> BTreeMap<(String, i32), i64> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let mut ends = BTreeMap::new();
    for i in range {
        let partition = (i % partitions as u64) as i32;
        let key = format!("k{i}");
        let payload = value(i);
        let record = BaseRecord::to(topic)
            .partition(partition)
            .key(&key)
            .payload(&payload);
        // Only a full queue is waited out; any other error fails the test.
        send_retrying(&producer, record).unwrap_or_else(|e| panic!("producing to {topic}: {e}"));
        *ends.entry((topic.to_string(), partition)).or_insert(0) += 1;
    }
    producer
        .flush(Timeout::After(Duration::from_secs(60)))
        .expect("flush");
    ends
}

/// One message to produce: partition, key, value.
pub type Message = (i32, Option<Vec<u8>>, Option<Vec<u8>>);

/// Produces `messages` in order (to a fresh topic) and returns each one's offset, counting
/// from `next` (the next offset of each partition, updated).
pub fn produce_messages(
    brokers: &str,
    topic: &str,
    messages: &[Message],
    next: &mut BTreeMap<i32, i64>,
) -> Vec<i64> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let mut offsets = Vec::with_capacity(messages.len());
    for (partition, key, value) in messages {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(*partition);
        if let Some(k) = key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = value {
            record = record.payload(v.as_slice());
        }
        send_retrying(&producer, record).unwrap_or_else(|e| panic!("producing to {topic}: {e}"));
        let slot = next.entry(*partition).or_insert(0);
        offsets.push(*slot);
        *slot += 1;
    }
    producer
        .flush(Timeout::After(Duration::from_secs(60)))
        .expect("flush");
    offsets
}

/// A small JSON order record that fits [`COLUMNS`].
pub fn order_json(i: u64) -> Vec<u8> {
    format!(r#"{{"id":"id-{i:09}","n":{i},"note":"order number {i} with some padding text"}}"#)
        .into_bytes()
}

/// [`order_json`], except `b"not json"` for the records where `bad(i)` holds: a stream with
/// known malformed records.
pub fn order_json_unless(bad: impl Fn(u64) -> bool) -> impl Fn(u64) -> Vec<u8> {
    order_json_except(bad, |_| b"not json".to_vec())
}

/// [`order_json`], except `other(i)` for the records where `special(i)` holds.
pub fn order_json_except(
    special: impl Fn(u64) -> bool,
    other: impl Fn(u64) -> Vec<u8>,
) -> impl Fn(u64) -> Vec<u8> {
    move |i| {
        if special(i) {
            other(i)
        } else {
            order_json(i)
        }
    }
}

/// The column block matching [`order_json`].
pub const COLUMNS: &str = r#"columns = [
  { name = "id", type = "string", nullable = false },
  { name = "n", type = "long", nullable = false },
  { name = "note", type = "string" },
]"#;

/// A pipeline under test: a temporary directory with its config and table.
pub struct Fixture {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// The `pipeline.toml`.
    pub config: PathBuf,
    /// The table directory.
    pub table: PathBuf,
    exe: PathBuf,
}

impl Fixture {
    /// Writes a config reading `topic` into `<tmp>/table`, with `extra` TOML appended.
    pub fn new(exe: &Path, brokers: &str, topic: &str, extra: &str) -> Self {
        Self::with_columns(exe, brokers, topic, COLUMNS, extra)
    }

    /// Like [`Fixture::new`] with another `columns = [...]` block.
    pub fn with_columns(
        exe: &Path,
        brokers: &str,
        topic: &str,
        columns: &str,
        extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("pipeline.toml");
        let text = format!(
            "pipeline_id = \"test\"\n\n[source]\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\n\n[sink]\ntable_uri = \"table\"\n{columns}\n\n{extra}\n"
        );
        std::fs::write(&config, text).expect("write config");
        let table = dir.path().join("table");
        Self {
            dir,
            config,
            table,
            exe: exe.to_path_buf(),
        }
    }

    /// Like [`Fixture::new`] writing to `table_uri` (an `s3://` URI, say) instead of
    /// `<tmp>/table`; [`Fixture::table`] is then unused.
    pub fn with_table_uri(
        exe: &Path,
        brokers: &str,
        topic: &str,
        table_uri: &str,
        extra: &str,
    ) -> Self {
        let fixture = Self::new(exe, brokers, topic, extra);
        let text = std::fs::read_to_string(&fixture.config).expect("read config");
        let text = text.replacen(
            "table_uri = \"table\"",
            &format!("table_uri = \"{table_uri}\""),
            1,
        );
        std::fs::write(&fixture.config, text).expect("write config");
        fixture
    }

    /// The pipeline's state directory (WAL and checkpoint store), as configured by default.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".tidemark").join("test")
    }

    /// Starts `tidemark run` on the fixture's config with extra env vars.
    pub fn spawn(&self, until_caught_up: bool, env: &[(&str, &str)]) -> Child {
        self.spawn_with(until_caught_up, &[], env)
    }

    /// Starts `tidemark run` with extra arguments and env vars.
    pub fn spawn_with(&self, until_caught_up: bool, args: &[&str], env: &[(&str, &str)]) -> Child {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("run").arg("--config").arg(&self.config).args(args);
        if until_caught_up {
            cmd.arg("--until-caught-up");
        }
        cmd.env("RUST_LOG", TEST_LOG_FILTER)
            .env_remove(tidemark_engine::fault::ENV)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tidemark")
    }

    /// Runs until caught up and returns the process output.
    pub fn run_to_end(&self, env: &[(&str, &str)]) -> Output {
        self.spawn(true, env).wait_with_output().expect("wait")
    }

    /// Runs `tidemark status` (with `--json` if asked) and returns its output.
    pub fn status(&self, json: bool) -> Output {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("status").arg("--config").arg(&self.config);
        if json {
            cmd.arg("--json");
        }
        cmd.env("RUST_LOG", "warn")
            .output()
            .expect("run tidemark status")
    }

    /// Parquet files in the table directory that the table does not reference: must be none.
    pub fn orphan_files(&self, live: &std::collections::BTreeSet<String>) -> Vec<String> {
        std::fs::read_dir(&self.table)
            .expect("list table")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".parquet") && !live.contains(n))
            .collect()
    }
}

/// The log filter of pipelines under test: Tidemark at info, the Delta kernel's per-snapshot
/// chatter off (it would drown the lines the tests read).
pub const TEST_LOG_FILTER: &str = "info,buoyant_kernel=warn,deltalake_core=warn,librdkafka=warn";

/// Reads `child`'s stderr to the end on a thread, so a running pipeline never blocks on a full
/// pipe; join the handle for the log once the child has exited.
pub fn drain_stderr(child: &mut Child) -> std::thread::JoinHandle<String> {
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        strip_ansi(&s)
    })
}

/// `text` without ANSI colour codes (tracing colours its output even into pipes).
pub use tidemark_tools::child_log::strip_ansi;

/// The stderr of `output`, without colour codes.
pub fn stderr_of(output: &Output) -> String {
    strip_ansi(&String::from_utf8_lossy(&output.stderr))
}

/// The JSON summary line `tidemark run` prints on stdout.
pub fn summary(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no summary line; status {:?}\nstderr:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// The deterministic content the `checkpoint-torture` child writes, shared with the checks.
pub mod torture {
    /// Payload of WAL frame `i`: its number, then `i % 200` filler bytes.
    pub fn payload(i: u64) -> Vec<u8> {
        let mut p = i.to_le_bytes().to_vec();
        p.extend(std::iter::repeat_n((i % 251) as u8, (i % 200) as usize));
        p
    }

    /// Dedup keys inserted by checkpoint `epoch`, all at event time `epoch`.
    pub fn store_keys(epoch: u64) -> Vec<(Vec<u8>, i64)> {
        (0..1000)
            .map(|k| (format!("e{epoch}-k{k}").into_bytes(), epoch as i64))
            .collect()
    }
}

/// Runs `tests/python/<script>` with `args` and returns what it printed as JSON; a failing script
/// fails the test with its stderr.
pub fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let out = std::process::Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{script} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{script} {args:?} printed no JSON: {e}"))
}
