//! Tables on object storage (issue 16), against the S3-compatible server `scripts/test` starts
//! (moto) and tansu: the pipeline, `status` and the readers on `s3://` tables.

use tidemark_tests::{
    broker, have_python, python_json, s3_server, stderr_of, summary, Fixture, TEST_ACCESS_KEY_ID,
    TEST_SECRET_ACCESS_KEY,
};

use super::{topic_and_fixture, EXE};

/// The pipeline writes an `s3://` table that delta-rs (Python) and DuckDB read back: every
/// record once; `status` reads progress from the S3 table; a second run adds nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_writes_an_s3_table_exactly_once_that_other_readers_open() {
    let (Some(brokers), Some(s3)) = (broker(), s3_server()) else {
        return;
    };
    s3.set_process_env();
    let n = 3_000;
    let (plain, ends) = topic_and_fixture(&brokers, "s3-basic", 3, n, "").await;
    let topic = ends.keys().next().unwrap().0.clone();
    let uri = s3.table_uri(0, "basic");
    let fixture = Fixture::with_table_uri(
        std::path::Path::new(EXE),
        &brokers,
        &topic,
        &uri,
        "[checkpoint]\ninterval_ms = 200\nmax_records = 700\n",
    );
    drop(plain);
    // Debug logs of the store and deltalake too: the secret must not appear even there.
    let out = fixture.run_to_end(&[(
        "RUST_LOG",
        "info,object_store=debug,deltalake_core=debug,tidemark_connectors=debug,librdkafka=warn",
    )]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let first = summary(&out);
    assert_eq!(first["rows_written"], n, "{first}");
    let stderr = stderr_of(&out);
    assert!(
        !stderr.contains(TEST_SECRET_ACCESS_KEY),
        "the secret key must never be logged:\n{stderr}"
    );
    let info_lines = stderr.lines().filter(|l| !l.contains("DEBUG"));
    for line in info_lines {
        assert!(!line.contains(TEST_ACCESS_KEY_ID), "key id logged: {line}");
    }

    let again = fixture.run_to_end(&[]);
    assert!(again.status.success(), "{}", stderr_of(&again));
    assert_eq!(summary(&again)["rows_written"], 0);

    let status = fixture.status(true);
    assert!(status.status.success(), "{}", stderr_of(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let text = status.to_string();
    assert!(text.contains(&uri), "status names the S3 table: {text}");

    if have_python() {
        let view = python_json("read_s3_table.py", &[&uri]);
        assert_eq!(view["delta_rs_rows"], n, "{view}");
        assert_eq!(view["duckdb_rows"], n, "{view}");
        assert_eq!(view["duckdb_distinct_ids"], n, "{view}");
        assert_eq!(view["duckdb_distinct_offsets"], n, "{view}");
    }
}
