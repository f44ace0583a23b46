//! Issue 17: `/metrics` scraped during a run and parsed with a real Prometheus text parser
//! (`prometheus-parse`), `/readyz` through a hanging Delta commit, `tidemark status --check`,
//! and the status page rendered by headless Chromium.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};
use tidemark_tests::{
    broker, create_topic, drain_stderr, order_json, order_json_except, produce, produce_range,
    unique_topic, Fixture,
};

use super::EXE;

/// A free loopback address for the pipeline's HTTP endpoint.
pub(crate) fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("127.0.0.1:{}", listener.local_addr().expect("addr").port())
}

/// `GET path` over HTTP/1.0: (status code, body); `None` while nothing listens.
pub(crate) fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Waits until `addr` answers `/healthz`.
pub(crate) fn wait_for_http(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if get(addr, "/healthz").is_some_and(|(s, b)| s == 200 && b == "ok\n") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{addr}/healthz never answered");
}

/// One sample's labels.
type Labels = BTreeMap<String, String>;

/// The samples of one scrape, by metric name: (labels, value) pairs.
struct Scraped(BTreeMap<String, Vec<(Labels, f64)>>);

impl Scraped {
    fn parse(text: &str) -> Self {
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
        let mut by_name: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for s in scrape.samples {
            let value = match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => continue,
            };
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            by_name.entry(s.metric).or_default().push((labels, value));
        }
        Scraped(by_name)
    }

    /// The sum over every label set of `name` (0 when absent).
    fn sum(&self, name: &str) -> f64 {
        self.0
            .get(name)
            .map_or(0.0, |v| v.iter().map(|(_, x)| x).sum())
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

fn config_with_http(addr: &str, extra: &str) -> String {
    format!("[checkpoint]\ninterval_ms = 200\n\n[observability]\nhttp = \"{addr}\"\n{extra}")
}

fn sigterm(child: &std::process::Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

const COUNTERS: [&str; 6] = [
    "tidemark_records_read_total",
    "tidemark_records_written_total",
    "tidemark_records_duplicate_total",
    "tidemark_records_late_total",
    "tidemark_records_dead_lettered_total",
    "tidemark_epochs_committed_total",
];

#[tokio::test(flavor = "multi_thread")]
async fn metrics_scrapes_are_monotone_add_up_and_lag_reaches_zero() {
    let Some(brokers) = broker() else { return };
    let topic = unique_topic("obs-metrics");
    let partitions = 3;
    create_topic(&brokers, &topic, partitions).await;
    // Every 50th record repeats the previous id (a producer retry: a duplicate), every 97th
    // is not JSON (a dead letter).
    let value = order_json_except(
        |i| i % 50 == 1 || i % 97 == 5,
        |i| {
            if i % 97 == 5 {
                b"not json".to_vec()
            } else {
                order_json(i - 1)
            }
        },
    );
    let first = 20_000;
    produce(&brokers, &topic, partitions, first, &value);
    let addr = free_addr();
    let dedup = "[dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 3600000\n";
    let fixture = Fixture::new(
        Path::new(EXE),
        &brokers,
        &topic,
        &config_with_http(&addr, dedup),
    );
    // Logs as JSON lines (`--log-format json`), checked at the end.
    let mut child = fixture.spawn_with(false, &["--log-format", "json"], &[]);
    let log = drain_stderr(&mut child);
    wait_for_http(&addr);

    // More records while it runs, so scrapes see lag before it reaches 0.
    let (b2, t2) = (brokers.clone(), topic.clone());
    let second = 20_000;
    let producer = std::thread::spawn(move || {
        for chunk in 0..4u64 {
            let from = first + chunk * second / 4;
            produce_range(&b2, &t2, partitions, from..from + second / 4, &value);
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let total = (first + second) as f64;
    let mut previous: Option<Scraped> = None;
    let (mut scrapes, mut saw_lag, mut reads) = (0, false, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "not caught up in time; log:\n{}",
            {
                child.kill().ok();
                log.join().unwrap()
            }
        );
        let (status, text) = get(&addr, "/metrics").expect("scrape");
        assert_eq!(status, 200);
        let now = Scraped::parse(&text);
        scrapes += 1;
        // The accounting identity at every scrape.
        let read = now.sum("tidemark_records_read_total");
        let parts = now.sum("tidemark_records_written_total")
            + now.sum("tidemark_records_duplicate_total")
            + now.sum("tidemark_records_late_total")
            + now.sum("tidemark_records_dead_lettered_total");
        assert_eq!(
            read, parts,
            "read = written + duplicates + late + dead-lettered:\n{text}"
        );
        // Counters never go down, label set by label set.
        if let Some(before) = &previous {
            for name in COUNTERS {
                for (labels, v) in before.0.get(name).into_iter().flatten() {
                    let after = now.0[name]
                        .iter()
                        .find(|(l, _)| l == labels)
                        .map(|(_, x)| *x)
                        .unwrap_or_else(|| panic!("{name}{labels:?} vanished"));
                    assert!(after >= *v, "{name}{labels:?} went from {v} to {after}");
                }
            }
        }
        let lag = now.sum("tidemark_consumer_lag_records");
        let per_partition = now
            .0
            .get("tidemark_partition_lag_records")
            .map_or(0, Vec::len);
        saw_lag |= lag > 0.0;
        if reads.last() != Some(&read) {
            reads.push(read);
        }
        previous = Some(now);
        if read == total && lag == 0.0 && per_partition == partitions as usize {
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    producer.join().unwrap();
    let last = previous.unwrap();
    assert!(saw_lag, "no scrape saw records waiting");
    assert!(
        reads.len() >= 3,
        "the counters moved in too few steps: {reads:?}"
    );
    assert!(last.sum("tidemark_records_duplicate_total") > 0.0);
    let reasons = &last.0["tidemark_records_dead_lettered_total"];
    assert!(
        reasons.iter().any(
            |(l, v)| l.get("reason").map(String::as_str) == Some("malformed_json") && *v > 0.0
        ),
        "{reasons:?}"
    );
    for p in 0..partitions {
        let lag = last.0["tidemark_partition_lag_records"]
            .iter()
            .find(|(l, _)| l.get("partition") == Some(&p.to_string()))
            .map(|(_, v)| *v);
        assert_eq!(lag, Some(0.0), "partition {p}");
    }
    for name in [
        "tidemark_delta_commit_seconds",
        "tidemark_seal_fsync_seconds",
        "tidemark_parquet_write_seconds",
        "tidemark_checkpoint_seconds",
        "tidemark_epoch_duration_seconds",
        "tidemark_watermark_seconds",
        "tidemark_dedup_state_keys",
        "tidemark_wal_segments",
        "tidemark_last_checkpoint_age_seconds",
        "tidemark_recovery_duration_seconds",
        "process_resident_memory_bytes",
    ] {
        assert!(last.has(name), "{name} missing");
    }
    assert!(
        !last.has("tidemark_replica_lag_versions"),
        "no replica configured"
    );
    assert_eq!(get(&addr, "/readyz").map(|r| r.0), Some(200));
    sigterm(&child);
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "{log}");
    // Every log line is one JSON object with a level and a message, for log shippers.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["fields"].is_object()));
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "recovery done"),
        "{log}"
    );
    println!("{scrapes} scrapes, read counter steps: {reads:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_fails_while_a_delta_commit_hangs_and_recovers_after() {
    let Some(brokers) = broker() else { return };
    let topic = unique_topic("obs-readyz");
    create_topic(&brokers, &topic, 2).await;
    produce(&brokers, &topic, 2, 1_000, order_json);
    let addr = free_addr();
    // Not ready after 10 intervals (2 s) without a commit while records wait; the third Delta
    // commit hangs for 8 s.
    let fixture = Fixture::new(
        Path::new(EXE),
        &brokers,
        &topic,
        &config_with_http(&addr, "commit_stall_intervals = 10\n"),
    );
    let mut child = fixture.spawn(
        false,
        &[(tidemark_engine::io_faults::COMMIT_HANG_ENV, "8000@3")],
    );
    let log = drain_stderr(&mut child);
    wait_for_http(&addr);
    // Records keep arriving, so epochs keep coming and records wait during the hang.
    let (b2, t2) = (brokers.clone(), topic.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let producer = std::thread::spawn(move || {
        let mut from = 1_000;
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            produce_range(&b2, &t2, 2, from..from + 200, order_json);
            from += 200;
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    // Watched from the second commit on (the third hangs): before the first, a slow connect
    // to the broker can already outlast the 2 s threshold, which counts from the start.
    let second = fixture.table.join("_delta_log/00000000000000000002.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !second.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(second.exists(), "no second commit within 60 s");
    // ready -> not ready (commit stalled) -> ready
    let mut seen: Vec<(u16, String)> = Vec::new();
    let mut check_while_stalled = None;
    let mut check_after = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let (status, body) = get(&addr, "/readyz").expect("readyz answers");
        if seen.last().map(|s| s.0) != Some(status) {
            seen.push((status, body.trim().to_string()));
        }
        if status == 503 && body.contains("commit stalled") && check_while_stalled.is_none() {
            check_while_stalled = Some(status_check(&fixture));
        }
        let codes: Vec<u16> = seen.iter().map(|s| s.0).collect();
        if codes.windows(3).any(|w| w == [200, 503, 200]) {
            check_after = Some(status_check(&fixture));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.join().unwrap();
    sigterm(&child);
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "{log}");
    let codes: Vec<u16> = seen.iter().map(|s| s.0).collect();
    assert!(
        codes.windows(3).any(|w| w == [200, 503, 200]),
        "readyz went {seen:?}; log:\n{log}"
    );
    // Once it was ready, the stall is what made it unready.
    let ready_at = seen.iter().position(|s| s.0 == 200).unwrap();
    let stalled = seen[ready_at..].iter().find(|s| s.0 == 503).unwrap();
    assert!(stalled.1.contains("commit stalled"), "{seen:?}");
    assert!(
        log.contains("fault injection: the Delta commit hangs"),
        "{log}"
    );
    // `status --check` applies the same rules from outside the process.
    let (code, out) = check_while_stalled.expect("status --check ran during the stall");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("commit stalled"), "{out}");
    let (code, out) = check_after.expect("status --check ran after");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ready"), "{out}");
    // And once stopped, nothing runs the pipeline: not ready.
    let (code, out) = status_check(&fixture);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not recovered"), "{out}");
}

/// `tidemark status --check`: (exit code, stdout and stderr).
fn status_check(fixture: &Fixture) -> (Option<i32>, String) {
    let out = Command::new(EXE)
        .args(["status", "--check", "--config"])
        .arg(&fixture.config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run status --check");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium with `args` then `url`, killed after a minute.
fn chromium(profile: &Path, args: &[&str], url: &str) -> std::process::Output {
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let _ = drain_stderr(&mut child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("chromium did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::process::Output {
        status: child.wait().unwrap(),
        stdout: reader.join().unwrap(),
        stderr: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_renders_in_headless_chromium() {
    let Some(brokers) = broker() else { return };
    if !Path::new(CHROMIUM).exists() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{CHROMIUM} is missing but CI=true (scripts/setup installs Debian's chromium)");
        }
        eprintln!("SKIPPED: {CHROMIUM} is missing; apt-get install chromium");
        return;
    }
    let topic = unique_topic("obs-page");
    let partitions = 3;
    create_topic(&brokers, &topic, partitions).await;
    produce(&brokers, &topic, partitions, 3_000, order_json);
    let addr = free_addr();
    let fixture = Fixture::new(
        Path::new(EXE),
        &brokers,
        &topic,
        &config_with_http(&addr, ""),
    );
    let mut child = fixture.spawn(false, &[]);
    let log = drain_stderr(&mut child);
    wait_for_http(&addr);
    // Until every record is committed (lag 0 everywhere).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = Scraped::parse(&get(&addr, "/metrics").expect("scrape").1);
        if m.sum("tidemark_records_read_total") == 3_000.0
            && m.sum("tidemark_consumer_lag_records") == 0.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "not caught up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let url = format!("http://{addr}/");
    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(profile.path(), &["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let shot = shots.join("tidemark-status-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let out = chromium(
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1100,900",
        ],
        &url,
    );
    sigterm(&child);
    child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(out.status.success(), "chromium --screenshot failed");

    assert!(
        dom.contains(r#"<span id="pipeline-id">test</span>"#),
        "{dom}\n{log}"
    );
    let epoch = dom
        .split(r#"<span id="epoch">"#)
        .nth(1)
        .and_then(|s| s.split('<').next())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no epoch on the page:\n{dom}"));
    assert!(epoch >= 1, "{dom}");
    for p in 0..partitions {
        let row = format!(r#"<tr class="partition" data-partition="{topic}/{p}">"#);
        assert!(dom.contains(&row), "no lag row for partition {p}:\n{dom}");
    }
    assert_eq!(
        dom.matches(r#"<tr class="partition""#).count(),
        partitions as usize
    );
    assert_eq!(
        dom.matches(r#"<td class="lag">0</td>"#).count(),
        partitions as usize,
        "{dom}"
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    println!("screenshot: {}", shot.display());
}

/// The value of `name` for the sample labelled `replica`, when present.
fn replica_gauge(scraped: &Scraped, name: &str) -> Option<f64> {
    scraped.0.get(name)?.first().map(|(_, v)| *v)
}

/// With `[replica]` configured, the running pipeline measures the replica's lag: versions
/// behind grow while nothing replicates, and fall to 0 once `tidemark replicate` caught up.
#[tokio::test(flavor = "multi_thread")]
async fn replica_lag_metrics_follow_the_replica() {
    let Some(brokers) = broker() else { return };
    let topic = unique_topic("obs-replica");
    create_topic(&brokers, &topic, 2).await;
    produce(&brokers, &topic, 2, 600, order_json);
    let addr = free_addr();
    let fixture = Fixture::new(
        Path::new(EXE),
        &brokers,
        &topic,
        &config_with_http(&addr, "\n[replica]\ntable_uri = \"replica\"\n"),
    );
    let replica = fixture.dir.path().join("replica");
    let mut child = fixture.spawn(false, &[]);
    let log = drain_stderr(&mut child);
    wait_for_http(&addr);
    let scrape_until = |what: &str, ok: &dyn Fn(f64) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, body) = get(&addr, "/metrics").expect("metrics answer");
            let scraped = Scraped::parse(&body);
            if let Some(v) = replica_gauge(&scraped, "tidemark_replica_lag_versions") {
                if ok(v) {
                    return (v, body);
                }
            }
            assert!(Instant::now() < deadline, "{what}: last scrape\n{body}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    // Every record committed (so the table stays put), nothing replicated yet: the replica
    // lacks every version of the table.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = get(&addr, "/metrics").expect("metrics answer");
        if Scraped::parse(&body).sum("tidemark_records_written_total") >= 600.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "600 records never committed:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let (behind, _) = scrape_until("lag before replicating", &|v| v >= 1.0);
    assert!(behind >= 1.0);
    let out = Command::new(EXE)
        .args(["replicate", "--from"])
        .arg(&fixture.table)
        .arg("--to")
        .arg(&replica)
        .output()
        .expect("replicate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Caught up (no new records arrive, so the table stays at what was replicated).
    let (after, body) = scrape_until("lag after replicating", &|v| v == 0.0);
    assert_eq!(after, 0.0);
    assert!(body.contains("tidemark_replica_lag_seconds"), "{body}");
    sigterm(&child);
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "{log}");
}
