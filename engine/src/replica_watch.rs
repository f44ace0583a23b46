//! Keeps the replica-lag metrics current while a pipeline runs with a `[replica]` configured
//! and metrics on: a background task measures the lag read-only every few seconds (the same
//! [`tidemark_table::measure_lag`] `tidemark status` shows) and hands it to
//! [`crate::metrics::set_replica_lag`]. A failed measurement is logged and retried at the next
//! tick; it never touches the pipeline.

use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::warn;
use url::Url;

use crate::metrics;

/// How often the lag is measured.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// The running watcher; dropping it stops the measurements.
pub struct ReplicaWatch(JoinHandle<()>);

impl Drop for ReplicaWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts measuring `replica`'s lag behind `table` when metrics are on (otherwise `None`).
pub fn start(table: &Url, replica: &Url) -> Option<ReplicaWatch> {
    metrics::get()?;
    let (table, replica) = (table.clone(), replica.clone());
    Some(ReplicaWatch(tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        let mut warned = false;
        loop {
            tick.tick().await;
            match measure_lag(&table, &replica).await {
                Ok(lag) => {
                    metrics::set_replica_lag(
                        replica.as_str(),
                        lag.versions_behind,
                        lag.seconds_behind,
                    );
                    warned = false;
                }
                Err(e) if !warned => {
                    warn!(replica = %replica, error = %e, "cannot measure the replica's lag (retrying every {}s)", INTERVAL.as_secs());
                    warned = true;
                }
                Err(_) => {}
            }
        }
    })))
}

/// Measures `replica`'s lag behind `table` read-only (for `tidemark status` and the watcher);
/// the error says which table could not be read.
pub async fn measure_lag(
    table: &Url,
    replica: &Url,
) -> Result<tidemark_table::ReplicationLag, String> {
    let source = tidemark_table::open_store(table.as_str()).map_err(|e| e.to_string())?;
    let copy = tidemark_table::open_store(replica.as_str()).map_err(|e| e.to_string())?;
    tidemark_table::measure_lag(&source, &copy)
        .await
        .map_err(|e| e.to_string())
}
