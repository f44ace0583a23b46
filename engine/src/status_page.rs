//! The live status page served at `/`: server-rendered HTML with no script and no build step,
//! refreshing itself every few seconds. It shows what `tidemark status` shows, live: the epoch,
//! readiness, checkpoint and commit age, the watermark, the last recovery, a throughput
//! sparkline, lag per partition, and replica lag once a replica reports it.

use std::fmt::Write;

use crate::health::Health;
use crate::metrics::{Live, RunInfo};

/// Seconds between the page's refreshes.
pub const REFRESH_SECS: u32 = 2;

/// Escapes `s` for HTML text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Unix seconds as an ISO 8601 UTC time.
fn utc(secs: f64) -> String {
    let micros = (secs * 1e6) as i64;
    arrow::temporal_conversions::timestamp_us_to_datetime(micros).map_or_else(
        || "out of range".into(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

fn age(now: f64, at: Option<f64>) -> String {
    at.map_or("none yet".into(), |t| {
        format!("{:.1} s ago", (now - t).max(0.0))
    })
}

/// Records per second between successive commits, oldest first.
pub fn throughput(live: &Live) -> Vec<f64> {
    live.history
        .iter()
        .zip(live.history.iter().skip(1))
        .map(|((t0, r0), (t1, r1))| {
            let dt = (t1 - t0).max(1e-3);
            (r1.saturating_sub(*r0)) as f64 / dt
        })
        .collect()
}

/// An inline SVG polyline of `values` (a flat line when there are fewer than two).
fn sparkline(values: &[f64]) -> String {
    const W: f64 = 360.0;
    const H: f64 = 48.0;
    let max = values.iter().copied().fold(0.0_f64, f64::max).max(1.0);
    let n = values.len().max(2) as f64 - 1.0;
    let points: Vec<String> = if values.len() < 2 {
        vec![format!("0,{H}"), format!("{W},{H}")]
    } else {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", i as f64 / n * W, H - v / max * (H - 2.0)))
            .collect()
    };
    format!(
        r##"<svg class="sparkline" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="records per second"><polyline fill="none" stroke="#2a6fdb" stroke-width="2" points="{}"/></svg>"##,
        points.join(" ")
    )
}

/// The page for `live` at unix time `now`.
pub fn render(live: &Live, info: &RunInfo, health: &Health, now: f64) -> String {
    let mut rows = String::new();
    let mut row = |k: &str, v: String| {
        let _ = write!(rows, "<tr><th>{}</th><td>{}</td></tr>", esc(k), v);
    };
    row(
        "ready",
        if health.ready {
            r#"<span class="ok">ready</span>"#.to_string()
        } else {
            format!(r#"<span class="bad">{}</span>"#, esc(&health.to_string()))
        },
    );
    row(
        "epoch",
        format!(r#"<span id="epoch">{}</span> (being read)"#, live.epoch),
    );
    row(
        "last commit",
        format!(
            "epoch {}, table version {}, {}",
            live.committed_epoch
                .map_or("none".into(), |e| e.to_string()),
            live.table_version.map_or("none".into(), |v| v.to_string()),
            age(now, live.last_commit_at)
        ),
    );
    row("checkpoint age", age(now, live.last_checkpoint_at));
    row(
        "watermark",
        match live.watermark {
            Some(w) => format!("{} ({:.1} s behind the wall clock)", utc(w), now - w),
            None if info.dedup => "none yet".into(),
            None => "off (no [dedup])".into(),
        },
    );
    row(
        "last recovery",
        match &live.recovery {
            Some(r) => format!(
                "{} in {} ms, {} record(s) replayed from the WAL, at {}",
                esc(r.case),
                r.ms,
                r.replayed,
                utc(r.at)
            ),
            None => "recovering…".into(),
        },
    );
    let c = live.counts;
    row(
        "records (this run)",
        format!(
            "read {} = written {} + duplicates {} + late {} + dead-lettered {}",
            c.read, c.written, c.duplicates, c.late, c.dead_lettered
        ),
    );
    if !live.dead_lettered.is_empty() {
        let reasons: Vec<String> = live
            .dead_lettered
            .iter()
            .map(|(r, n)| format!("{} {n}", esc(r)))
            .collect();
        row("dead letters by reason", reasons.join(", "));
    }
    row(
        "WAL",
        format!("{} segment(s), {} bytes", live.wal_segments, live.wal_bytes),
    );
    if let Some(k) = live.dedup_keys {
        row("dedup state", format!("{k} keys held"));
    }
    if let Some(r) = &live.replica {
        row(
            "replica lag",
            format!(
                "{}: {} version(s), {:.1} s behind",
                esc(&r.table),
                r.versions,
                r.seconds
            ),
        );
    }
    let rates = throughput(live);
    let latest = rates.last().copied().unwrap_or(0.0);

    let mut partitions = String::new();
    for (name, p) in &live.partitions {
        let show = |v: Option<i64>| v.map_or("?".into(), |v| v.to_string());
        let _ = write!(
            partitions,
            r#"<tr class="partition" data-partition="{name}"><td>{name}</td><td>{}</td><td>{}</td><td class="lag">{}</td></tr>"#,
            show(p.next_offset),
            show(p.high_watermark),
            show(p.lag()),
            name = esc(name)
        );
    }
    let id = esc(&live.pipeline_id);
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECS}">
<title>Tidemark · {id}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}}
h1{{font-size:1.3em}} table{{border-collapse:collapse;margin-bottom:1.2em}}
th,td{{text-align:left;padding:.2em .8em;border-bottom:1px solid #ddd}}
th{{font-weight:600;color:#555}} .ok{{color:#187a2f;font-weight:600}} .bad{{color:#b00020;font-weight:600}}
td.lag{{font-variant-numeric:tabular-nums}} .muted{{color:#777}}
</style></head><body>
<h1>Tidemark pipeline <span id="pipeline-id">{id}</span></h1>
<table id="summary">{rows}</table>
<h2>Throughput</h2>
<p>{sparkline} <span id="throughput">{latest:.0}</span> records/s committed <span class="muted">(the last {n} s, per second)</span></p>
<h2>Lag per partition</h2>
<table id="partitions"><tr><th>partition</th><th>next offset (committed)</th><th>high watermark</th><th>lag</th></tr>{partitions}</table>
<p class="muted">Refreshes every {REFRESH_SECS} s · <a href="/metrics">/metrics</a> · <a href="/readyz">/readyz</a> · rendered {now}</p>
</body></html>
"#,
        sparkline = sparkline(&rates),
        n = rates.len(),
        now = utc(now),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::PartitionSnapshot;
    use std::time::Duration;

    #[test]
    fn the_page_shows_the_pipeline_the_epoch_and_a_lag_row_per_partition() {
        let mut live = Live {
            pipeline_id: "orders<&>".into(),
            epoch: 7,
            ..Live::default()
        };
        for p in 0..3 {
            live.partitions.insert(
                format!("t/{p}"),
                PartitionSnapshot {
                    next_offset: Some(10),
                    high_watermark: Some(15 + p),
                },
            );
        }
        live.history.extend([(0.0, 0), (1.0, 500), (2.0, 1500)]);
        let info = RunInfo {
            pipeline_id: "orders<&>".into(),
            interval: Duration::from_secs(1),
            commit_stall_after: Duration::from_secs(30),
            watermark_stuck_after: Duration::from_secs(600),
            dedup: false,
        };
        let page = render(&live, &info, &Health::default(), 3.0);
        assert!(page.contains(r#"<span id="pipeline-id">orders&lt;&amp;&gt;</span>"#));
        assert!(page.contains(r#"<span id="epoch">7</span>"#));
        assert_eq!(page.matches(r#"<tr class="partition""#).count(), 3);
        assert!(page.contains(r#"<td class="lag">7</td>"#));
        assert!(page.contains(r#"<span id="throughput">1000</span>"#));
        assert!(
            !page.contains("replica lag"),
            "no replica row until one is set"
        );
        assert_eq!(throughput(&live), [500.0, 1000.0]);
        live.replica = Some(crate::metrics::ReplicaLag {
            table: "s3://dr/orders".into(),
            versions: 3,
            seconds: 42.0,
        });
        let page = render(&live, &info, &Health::default(), 3.0);
        assert!(page
            .contains("<th>replica lag</th><td>s3://dr/orders: 3 version(s), 42.0 s behind</td>"));
    }
}
