//! After a failover: rows the primary table holds that the failed-over table lacks, by dedup
//! key (the report's `missing_rows`; 0 when the mirror held every record the primary read).

use std::collections::HashSet;

use arrow::array::RecordBatch;
use arrow::row::{RowConverter, SortField};
use futures::StreamExt;
use tidemark_connectors::delta::{DeltaSink, DeltaSinkError};
use url::Url;

use crate::config::PipelineConfig;

/// Every dedup key of `sink`'s rows, encoded with Arrow's row format.
async fn keys_of(sink: &DeltaSink, columns: &[String]) -> Result<HashSet<Vec<u8>>, String> {
    let mut keys = HashSet::new();
    let mut batches = sink.read_columns(columns).map_err(|e| e.to_string())?;
    let mut converter: Option<RowConverter> = None;
    while let Some(batch) = batches.next().await {
        let batch: RecordBatch = batch.map_err(|e: DeltaSinkError| e.to_string())?;
        let arrays: Vec<_> = columns
            .iter()
            .map(|c| {
                batch
                    .column_by_name(c)
                    .cloned()
                    .ok_or_else(|| format!("table {} has no column {c:?}", sink.uri()))
            })
            .collect::<Result<_, _>>()?;
        if converter.is_none() {
            let fields = arrays
                .iter()
                .map(|a| SortField::new(a.data_type().clone()))
                .collect();
            converter = Some(RowConverter::new(fields).map_err(|e| e.to_string())?);
        }
        let Some(conv) = converter.as_ref() else {
            continue;
        };
        let rows = conv.convert_columns(&arrays).map_err(|e| e.to_string())?;
        for row in rows.iter() {
            keys.insert(row.as_ref().to_vec());
        }
    }
    Ok(keys)
}

/// How many distinct dedup keys of `primary`'s rows the pipeline's table lacks; `None` when the
/// dedup key is not made of table columns (or there is no dedup, or no primary table).
pub async fn missing_rows(config: &PipelineConfig, primary: &Url) -> Result<Option<u64>, String> {
    let Some(dedup) = &config.dedup else {
        return Ok(None);
    };
    if dedup.key.iter().any(|k| k.starts_with("_kafka_key")) {
        return Ok(None);
    }
    let open = |url: Url| async move {
        DeltaSink::open_existing(&url, &config.pipeline_id)
            .await
            .map_err(|e| e.to_string())
    };
    let Some(primary) = open(primary.clone()).await? else {
        return Ok(None);
    };
    let Some(table) = open(config.paths.table_url.clone()).await? else {
        return Ok(None);
    };
    let want = keys_of(&primary, &dedup.key).await?;
    let have = keys_of(&table, &dedup.key).await?;
    Ok(Some(want.difference(&have).count() as u64))
}
