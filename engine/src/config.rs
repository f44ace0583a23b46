//! The pipeline configuration (`pipeline.toml`) and its validation.
//!
//! Every invalid setting fails at start-up with an error naming the file and the setting, so a
//! pipeline never starts half-configured. Unknown keys are errors too (a typo must not be
//! silently ignored).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::datatypes::{DataType as ArrowType, Field, TimeUnit};
use deltalake::kernel::{DataType as DeltaType, StructField};
use serde::Deserialize;
use tidemark_connectors::decode::{COL_OFFSET, COL_PARTITION, COL_TIMESTAMP, COL_TOPIC};
use url::Url;

use crate::epoch_log::MAX_RECORD_BYTES;

/// A configuration that cannot be used, naming the file and the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the expected shape.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key and the line).
        message: String,
    },
    /// A setting has a value Tidemark cannot use.
    #[error("config file {path}: setting `{setting}` {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted name of the setting.
        setting: String,
        /// What is wrong with it.
        message: String,
    },
}

/// What to do with a record that does not decode, does not fit the schema, is too large, or
/// has no dedup key or event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalidRecord {
    /// Write it to the dead-letter table (raw bytes, coordinates, reason) and go on.
    #[default]
    DeadLetter,
    /// Stop the pipeline with an error naming the record (nothing after it is committed).
    Fail,
    /// Skip the record, log it, and list it in the commitInfo of the epoch that covers it.
    Skip,
}

impl OnInvalidRecord {
    /// The setting's value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            OnInvalidRecord::DeadLetter => "dead_letter",
            OnInvalidRecord::Fail => "fail",
            OnInvalidRecord::Skip => "skip",
        }
    }
}

/// What to do with a record whose event time is below the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnLate {
    /// Write it to the dead-letter table (reason `late`).
    #[default]
    DeadLetter,
    /// Drop it (counted as late).
    Drop,
}

impl OnLate {
    /// The setting's value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            OnLate::DeadLetter => "dead_letter",
            OnLate::Drop => "drop",
        }
    }
}

/// Where a dedup key or event time comes from.
pub const KAFKA_KEY: &str = "_kafka_key";

/// `[dedup]`: watermark deduplication.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Columns whose values together form the dedup key, or `["_kafka_key"]` for the Kafka
    /// message key.
    pub key: Vec<String>,
    /// The event-time column (`timestamp`, or `long` in `event_time_unit`), or
    /// `_kafka_timestamp` for the Kafka message timestamp.
    pub event_time: String,
    /// Unit of a `long` event-time column: `millis` (default) or `micros`.
    #[serde(default)]
    pub event_time_unit: EventTimeUnit,
    /// How far behind the newest event time a record may arrive and still count, in ms.
    pub allowed_lateness_ms: u64,
    /// A partition with no record for this long stops holding the watermark back, in ms.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// What happens to late records.
    #[serde(default)]
    pub late: OnLate,
    /// Most an event time may be ahead of the wall clock, in ms: a record beyond its batch's
    /// wall clock plus this is dead-lettered as `event_time_in_future` (counted, never in
    /// state, never moving the watermark). Default one hour.
    #[serde(default = "default_max_event_time_skew_ms")]
    pub max_event_time_skew_ms: u64,
    /// Keys the state is expected to hold (about the keys per second times the allowed
    /// lateness): its in-memory table is sized for them at start, with a third more room for
    /// evicted keys held until a sweep, so the reading thread never stops to grow it while the
    /// state fills or slides (each growth moves every key). 0 (default): the table grows as
    /// keys come. Memory: ~57 bytes per expected key, taken as keys arrive.
    #[serde(default)]
    pub expected_keys: u64,
}

fn default_idle_timeout_ms() -> u64 {
    60_000
}

fn default_max_event_time_skew_ms() -> u64 {
    3_600_000
}

/// Largest `dedup.expected_keys`: a table for a billion keys is ~57 GB already.
pub const MAX_EXPECTED_KEYS: u64 = 1_000_000_000;

/// Largest `dedup.max_event_time_skew_ms` (100 years): larger values would only overflow.
pub const MAX_EVENT_TIME_SKEW_MS: u64 = 100 * 366 * 24 * 3_600_000;

/// Unit of an integer event-time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EventTimeUnit {
    /// Milliseconds since the Unix epoch.
    #[default]
    Millis,
    /// Microseconds since the Unix epoch.
    Micros,
}

impl EventTimeUnit {
    /// The setting's value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            EventTimeUnit::Millis => "millis",
            EventTimeUnit::Micros => "micros",
        }
    }
}

/// Longest `pipeline_id` in bytes (it is part of file and directory names).
pub const MAX_PIPELINE_ID_BYTES: usize = 200;

/// Why `id` cannot be a pipeline id, if it cannot. The id names the state directory
/// (`.tidemark/<id>`) and the data files (`tidemark-<id>-e<epoch:012>-p<part>...`), so it must
/// be a plain file-name component and must not contain what the file-name parser looks for:
/// with `-e<12 digits>-p` inside an id, one pipeline's files could parse as another's.
pub fn pipeline_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("must not be empty".into());
    }
    if id == "." || id == ".." {
        return Some(format!("{id:?} is not a usable directory name"));
    }
    if id.len() > MAX_PIPELINE_ID_BYTES {
        return Some(format!(
            "is {} bytes long; at most {MAX_PIPELINE_ID_BYTES} (it is part of file names)",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!(
            "must use only letters, digits, '-', '_' and '.', got {id:?} (holds {c:?})"
        ));
    }
    let b = id.as_bytes();
    let file_pattern = (0..b.len()).any(|i| {
        b[i..].starts_with(b"-e")
            && b.len() >= i + 16
            && b[i + 2..i + 14].iter().all(u8::is_ascii_digit)
            && &b[i + 14..i + 16] == b"-p"
    });
    if file_pattern {
        return Some(format!(
            "{id:?} holds \"-e\" + 12 digits + \"-p\", the epoch/part pattern of data file names \
             (tidemark-<pipeline_id>-e<epoch>-p<part>): another pipeline's files could be taken for this one's"
        ));
    }
    None
}

/// A whole pipeline: one source, one table, validated and with its locations resolved.
///
/// Built only by [`PipelineConfig::load`] / [`PipelineConfig::parse`], so every
/// `PipelineConfig` has passed validation and carries [`ResolvedPaths`] computed once, from the
/// config file's location.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Stable name of the pipeline: the Delta txn appId. Changing it starts over.
    pub pipeline_id: String,
    /// Where records come from.
    pub source: SourceConfig,
    /// Where rows go.
    pub sink: SinkConfig,
    /// Epoch boundaries, the WAL and the checkpoint store.
    pub checkpoint: CheckpointConfig,
    /// What happens to bad records.
    pub errors: ErrorsConfig,
    /// Watermark deduplication (off when absent).
    pub dedup: Option<DedupConfig>,
    /// The HTTP endpoint (metrics, health, status page) and the health rules.
    pub observability: ObservabilityConfig,
    /// A replica of the table kept by `tidemark replicate` (absent: none); `status` shows its lag.
    pub replica: Option<ReplicaConfig>,
    /// Delta checkpoints, log cleanup and compaction (`[maintenance]`, see
    /// [`crate::maintenance`]).
    pub maintenance: crate::maintenance::MaintenanceConfig,
    /// The table, the dead-letter table and the state directory, resolved at load against the
    /// config file's directory (changing `sink.table_uri` afterwards does not move them).
    pub paths: ResolvedPaths,
    /// Set by [`PipelineConfig::as_worker`]: this process is one worker of a shared pipeline.
    pub worker: Option<WorkerIdentity>,
}

/// The locations a config names, resolved once at load: a URL as given, a relative path
/// against the config file's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPaths {
    /// The table (`sink.table_uri`).
    pub table_url: Url,
    /// The dead-letter table (see [`ErrorsConfig::dead_letter_table`]); resolved and checked
    /// even when no setting sends records there.
    pub dead_letter_url: Url,
    /// The state directory (`checkpoint.dir`, default `.tidemark/<pipeline_id>`), absolute.
    pub state_dir: PathBuf,
    /// The replica (`replica.table_uri`), if configured.
    pub replica_url: Option<Url>,
}

/// `pipeline.toml` as written, before validation: the sections of [`PipelineConfig`] plus the
/// settings that exist only to be refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    pipeline_id: String,
    source: SourceConfig,
    sink: SinkConfig,
    #[serde(default)]
    checkpoint: CheckpointConfig,
    /// Renamed to `[checkpoint]`; kept only to say so.
    #[serde(default)]
    batch: Option<toml::Value>,
    #[serde(default)]
    errors: ErrorsConfig,
    #[serde(default)]
    dedup: Option<DedupConfig>,
    #[serde(default)]
    observability: ObservabilityConfig,
    #[serde(default)]
    replica: Option<ReplicaConfig>,
    #[serde(default)]
    maintenance: crate::maintenance::MaintenanceConfig,
}

/// `[replica]`: a replica of the table that `tidemark replicate` keeps (in another region,
/// on another disk); the pipeline never writes it, `tidemark status` shows its lag.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// A local path (relative to the config file) or a URL such as `file:///dr/orders`.
    pub table_uri: String,
}

/// `[source]`: the Kafka topics to read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`.
    pub brokers: String,
    /// Topics to read (all partitions of each).
    pub topics: Vec<String>,
    /// Extra librdkafka consumer properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Scale-out: the Kafka consumer group the pipeline's workers join to share out its
    /// partitions (each worker started with `tidemark run --worker-id <id>`, see
    /// [`PipelineConfig::as_worker`]). Absent: one process reads every partition.
    #[serde(default)]
    pub group: Option<String>,
    /// With `group`: join as a static member (`group.instance.id` = the worker id), so a
    /// restart within `session.timeout.ms` keeps the worker's partitions without a rebalance.
    #[serde(default = "default_true")]
    pub static_membership: bool,
}

/// A worker of a pipeline shared by several (`source.group` and `--worker-id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerIdentity {
    /// The pipeline the workers share: the prefix of the table's partition claims.
    pub pipeline_id: String,
    /// This worker's id (its consumer-group instance id).
    pub worker_id: String,
    /// The consumer group (`source.group`).
    pub group: String,
}

/// `[sink]`: the Delta table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// A local path (relative to the config file) or a URL such as `file:///data/orders`.
    pub table_uri: String,
    /// Name recorded in the table's metadata when Tidemark creates it.
    #[serde(default)]
    pub table_name: Option<String>,
    /// Columns of the table; required only when the table does not exist yet.
    #[serde(default)]
    pub columns: Vec<ColumnConfig>,
    /// Add `_kafka_topic`, `_kafka_partition`, `_kafka_offset`, `_kafka_timestamp` to every row.
    #[serde(default = "default_true")]
    pub source_columns: bool,
}

fn default_true() -> bool {
    true
}

/// One `[[sink.columns]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// Column name (the JSON field name).
    pub name: String,
    /// Column type.
    #[serde(rename = "type")]
    pub kind: ColumnType,
    /// Whether the field may be null or missing.
    #[serde(default = "default_true")]
    pub nullable: bool,
}

/// The column types a JSON field can land in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// UTF-8 string.
    String,
    /// 32-bit signed integer.
    Int,
    /// 64-bit signed integer.
    Long,
    /// 32-bit float.
    Float,
    /// 64-bit float.
    Double,
    /// true/false.
    Boolean,
    /// Instant in microseconds, UTC (JSON: RFC 3339 string or integer microseconds).
    Timestamp,
    /// Calendar date (JSON: `YYYY-MM-DD`).
    Date,
}

impl ColumnType {
    fn delta(self) -> DeltaType {
        match self {
            ColumnType::String => DeltaType::STRING,
            ColumnType::Int => DeltaType::INTEGER,
            ColumnType::Long => DeltaType::LONG,
            ColumnType::Float => DeltaType::FLOAT,
            ColumnType::Double => DeltaType::DOUBLE,
            ColumnType::Boolean => DeltaType::BOOLEAN,
            ColumnType::Timestamp => DeltaType::TIMESTAMP,
            ColumnType::Date => DeltaType::DATE,
        }
    }

    fn arrow(self) -> ArrowType {
        match self {
            ColumnType::String => ArrowType::Utf8,
            ColumnType::Int => ArrowType::Int32,
            ColumnType::Long => ArrowType::Int64,
            ColumnType::Float => ArrowType::Float32,
            ColumnType::Double => ArrowType::Float64,
            ColumnType::Boolean => ArrowType::Boolean,
            ColumnType::Timestamp => {
                ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            ColumnType::Date => ArrowType::Date32,
        }
    }
}

/// `[checkpoint]`: where an epoch ends, and where the WAL and checkpoint store live.
///
/// An epoch ends when the first of `interval_ms`, `max_records` and `max_bytes` is reached
/// (counted from its first record; an idle pipeline seals nothing).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Directory of the WAL (`wal/`) and the checkpoint store (`store/`); relative paths are
    /// resolved against the config file's directory. Default `.tidemark/<pipeline_id>`.
    #[serde(default)]
    pub dir: Option<String>,
    /// Longest time an epoch collects records, in milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Most records in one epoch.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Most payload bytes (keys + values) in one epoch.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Most key + value bytes read ahead into the next epoch while one commits (pipelined
    /// epochs: the next epoch is read, logged and decoded during the commit). Reading waits
    /// when it is reached, so at most about `max_bytes + max_buffered_bytes` of records are
    /// held at once. Default 64 MiB.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: u64,
    /// When WAL appends are fsynced: `on_seal` (default: a seal fsyncs the whole epoch; an
    /// unsynced tail lost in a power cut is simply re-read from Kafka) or `every_batch`.
    #[serde(default)]
    pub wal_sync: WalSync,
    /// WAL segment size in bytes; segments wholly before the checkpoint are deleted.
    #[serde(default = "default_wal_segment_bytes")]
    pub wal_segment_bytes: u64,
    /// Checkpoints kept in the store's history (for `--rewind-to`).
    #[serde(default = "default_retain")]
    pub retain: usize,
    /// `false` turns the WAL and the checkpoint store off: plain batched writes, one Delta
    /// commit per epoch, resuming from the table alone (still exactly once for the table, but
    /// no WAL replay, no dedup state across restarts). For measuring what checkpoints cost.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

/// `checkpoint.wal_sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WalSync {
    /// fsync at each seal only.
    #[default]
    OnSeal,
    /// fsync after each batch read from the source.
    EveryBatch,
}

fn default_interval_ms() -> u64 {
    1000
}

fn default_max_records() -> usize {
    100_000
}

fn default_max_bytes() -> u64 {
    64 << 20
}

fn default_max_buffered_bytes() -> u64 {
    64 << 20
}

fn default_wal_segment_bytes() -> u64 {
    64 << 20
}

fn default_retain() -> usize {
    10
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            dir: None,
            interval_ms: default_interval_ms(),
            max_records: default_max_records(),
            max_bytes: default_max_bytes(),
            max_buffered_bytes: default_max_buffered_bytes(),
            wal_sync: WalSync::default(),
            wal_segment_bytes: default_wal_segment_bytes(),
            retain: default_retain(),
            enabled: true,
        }
    }
}

impl CheckpointConfig {
    /// The interval as a [`Duration`].
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// `[errors]`: bad-record handling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    /// `dead_letter` (default), `skip` or `fail`.
    #[serde(default)]
    pub on_invalid_record: OnInvalidRecord,
    /// The dead-letter Delta table: a path relative to the config file or a URL. Default: the
    /// sink table's path with `_dead_letters` appended.
    #[serde(default)]
    pub dead_letter_table: Option<String>,
    /// A record whose key + value exceed this many bytes is dead-lettered as `too_large`
    /// (coordinates, timestamp, size and a key of at most 4 KiB; never the value). At most
    /// what one WAL frame holds (`epoch_log::MAX_RECORD_BYTES`, 64 MiB less 287 bytes).
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Records never to write, by coordinates (`"orders/0@120..200"`, end not included):
    /// a burst of bad records restored away from the table that a rewind must not bring back.
    /// Each is dead-lettered (or skipped) with reason `quarantined` (see `quarantine.rs`).
    #[serde(default)]
    pub quarantine: Vec<String>,
}

fn default_max_record_bytes() -> usize {
    1 << 20
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        Self {
            on_invalid_record: OnInvalidRecord::default(),
            dead_letter_table: None,
            max_record_bytes: default_max_record_bytes(),
            quarantine: Vec::new(),
        }
    }
}

/// Consumer properties Tidemark owns; setting them would break exactly-once.
const RESERVED_PROPERTIES: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "bootstrap.servers",
];

impl PipelineConfig {
    /// Serves the HTTP endpoint on `addr` (`tidemark run --http`), checked like
    /// `observability.http`.
    pub fn set_http(&mut self, addr: String) -> Result<(), ConfigError> {
        let mut o = self.observability.clone();
        o.http = Some(addr);
        check_observability(&o, &Invalid(Path::new("--http")))?;
        self.observability = o;
        Ok(())
    }

    /// Makes this config that of worker `worker_id` of the pipeline (`tidemark run
    /// --worker-id`): `source.group` must be set. The worker gets its own txn appId
    /// (`<pipeline_id>.<worker_id>`: it is part of data file names, so no `/`), its own state
    /// directory (`<state dir>/workers/<worker_id>`) and claims partitions for the pipeline.
    pub fn as_worker(&mut self, worker_id: &str) -> Result<(), ConfigError> {
        let invalid = Invalid(Path::new("--worker-id"));
        let Some(group) = self.source.group.clone() else {
            return Err(invalid.at(
                "source.group",
                "--worker-id needs `group = \"<consumer group>\"` under [source]: the group the pipeline's workers join to share out its partitions",
            ));
        };
        if let Some(problem) = pipeline_id_problem(worker_id) {
            return Err(invalid.at("--worker-id", problem));
        }
        // `<pipeline>.<worker>` must name one pair: pipeline "p" with worker "x.w1" and
        // pipeline "p.x" with worker "w1" would share an appId.
        if worker_id.contains('.') {
            return Err(invalid.at(
                "--worker-id",
                format!("must not contain '.', got {worker_id:?} (use '-' or '_')"),
            ));
        }
        let worker_app_id = format!("{}.{worker_id}", self.pipeline_id);
        if let Some(problem) = pipeline_id_problem(&worker_app_id) {
            return Err(invalid.at("--worker-id", format!("with pipeline_id: {problem}")));
        }
        self.worker = Some(WorkerIdentity {
            pipeline_id: self.pipeline_id.clone(),
            worker_id: worker_id.to_string(),
            group,
        });
        self.paths.state_dir = self.paths.state_dir.join("workers").join(worker_id);
        self.pipeline_id = worker_app_id;
        Ok(())
    }

    /// Reads and validates `path`; relative locations are resolved against the file's
    /// directory (see [`ResolvedPaths`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        file.validate(path)
    }
}

impl ConfigFile {
    /// Checks each section in file order (the first problem found is the one reported), then
    /// resolves the locations.
    fn validate(self, path: &Path) -> Result<PipelineConfig, ConfigError> {
        let invalid = Invalid(path);
        check_pipeline_id(&self.pipeline_id, &invalid)?;
        check_source(&self.source, &invalid)?;
        check_sink(&self.sink, &invalid)?;
        check_checkpoint(
            &self.checkpoint,
            self.batch.is_some(),
            self.dedup.is_some(),
            &invalid,
        )?;
        check_errors(&self.errors, &invalid)?;
        check_observability(&self.observability, &invalid)?;
        crate::maintenance::check(&self.maintenance).map_err(|(k, m)| invalid.at(k, m))?;
        if let Some(d) = &self.dedup {
            check_dedup(d, &self.sink.columns, &invalid)?;
            // A partition moving to another worker takes its dedup state along by way of
            // the table's rows (crate::partition_dedup): the rows must say their partition
            // and hold the key.
            if self.source.group.is_some() {
                if !self.sink.source_columns {
                    return Err(invalid.at(
                        "sink.source_columns",
                        "cannot be false with source.group and [dedup]: a worker rebuilds the dedup state of a partition it is given from the table's rows of that partition, found by their _kafka_topic and _kafka_partition columns",
                    ));
                }
                if d.key.iter().any(|k| k == KAFKA_KEY) {
                    return Err(invalid.at(
                        "dedup.key",
                        "cannot be [\"_kafka_key\"] with source.group: a worker rebuilds the dedup state of a partition it is given from the table's rows, and the table does not store the Kafka key; name the columns that identify a record",
                    ));
                }
            }
        }
        let mut paths = ResolvedPaths::resolve(
            &self.pipeline_id,
            &self.sink,
            &self.checkpoint,
            &self.errors,
            path,
        )?;
        if let Some(replica) = &self.replica {
            let url = resolve_table(replica.table_uri.trim(), path, "replica.table_uri")?;
            if url == paths.table_url {
                return Err(invalid.at(
                    "replica.table_uri",
                    "the replica must not be the table itself (sink.table_uri)",
                ));
            }
            paths.replica_url = Some(url);
        }
        Ok(PipelineConfig {
            pipeline_id: self.pipeline_id,
            source: self.source,
            sink: self.sink,
            checkpoint: self.checkpoint,
            errors: self.errors,
            dedup: self.dedup,
            observability: self.observability,
            replica: self.replica,
            maintenance: self.maintenance,
            paths,
            worker: None,
        })
    }
}

/// Makes the [`ConfigError::Invalid`] of one config file.
struct Invalid<'a>(&'a Path);

impl Invalid<'_> {
    fn at(&self, setting: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.0.to_path_buf(),
            setting: setting.to_string(),
            message: message.into(),
        }
    }
}

/// `pipeline_id` (see [`pipeline_id_problem`]).
fn check_pipeline_id(id: &str, invalid: &Invalid) -> Result<(), ConfigError> {
    match pipeline_id_problem(id) {
        Some(problem) => Err(invalid.at("pipeline_id", problem)),
        None => Ok(()),
    }
}

/// `[source]`: brokers, topics, and no property Tidemark owns.
fn check_source(source: &SourceConfig, invalid: &Invalid) -> Result<(), ConfigError> {
    if source.brokers.trim().is_empty() {
        return Err(invalid.at("source.brokers", "must not be empty"));
    }
    if source.topics.is_empty() {
        return Err(invalid.at("source.topics", "must name at least one topic"));
    }
    if let Some(t) = source.topics.iter().find(|t| t.trim().is_empty()) {
        return Err(invalid.at("source.topics", format!("holds an empty topic name {t:?}")));
    }
    if source.group.as_deref().is_some_and(|g| g.trim().is_empty()) {
        return Err(invalid.at("source.group", "must not be empty (or leave it out)"));
    }
    if let Some(key) = source
        .properties
        .keys()
        .find(|key| RESERVED_PROPERTIES.contains(&key.as_str()))
    {
        return Err(invalid.at(
            &format!("source.properties.\"{key}\""),
            "is managed by Tidemark (positions live in the Delta table); remove it",
        ));
    }
    Ok(())
}

/// `[sink]`: a table location, and column names that are unique and not reserved.
fn check_sink(sink: &SinkConfig, invalid: &Invalid) -> Result<(), ConfigError> {
    if sink.table_uri.trim().is_empty() {
        return Err(invalid.at("sink.table_uri", "must not be empty"));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, c) in sink.columns.iter().enumerate() {
        let setting = format!("sink.columns[{i}].name");
        if c.name.is_empty() {
            return Err(invalid.at(&setting, "must not be empty"));
        }
        if c.name.starts_with("_kafka_") {
            return Err(invalid.at(
                &setting,
                format!(
                    "{:?}: the `_kafka_` prefix is reserved for source columns",
                    c.name
                ),
            ));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(invalid.at(&setting, format!("{:?} appears twice", c.name)));
        }
    }
    Ok(())
}

/// `[checkpoint]` (and the old `[batch]`, refused): positive limits, a usable segment size, a
/// non-empty directory, and the store on whenever dedup needs it.
fn check_checkpoint(
    c: &CheckpointConfig,
    has_batch_section: bool,
    dedup_on: bool,
    invalid: &Invalid,
) -> Result<(), ConfigError> {
    if has_batch_section {
        return Err(invalid.at(
            "batch",
            "was renamed: put interval_ms and max_records under [checkpoint]",
        ));
    }
    for (setting, value) in [
        ("checkpoint.interval_ms", c.interval_ms),
        ("checkpoint.max_records", c.max_records as u64),
        ("checkpoint.max_bytes", c.max_bytes),
        ("checkpoint.max_buffered_bytes", c.max_buffered_bytes),
        ("checkpoint.retain", c.retain as u64),
    ] {
        if value == 0 {
            return Err(invalid.at(setting, "must be greater than 0"));
        }
    }
    if c.wal_segment_bytes < 4096 {
        return Err(invalid.at(
            "checkpoint.wal_segment_bytes",
            format!("must be at least 4096, got {}", c.wal_segment_bytes),
        ));
    }
    if !c.enabled && dedup_on {
        return Err(invalid.at(
            "checkpoint.enabled",
            "cannot be false with [dedup]: dedup state lives in the checkpoint store",
        ));
    }
    if c.dir.as_deref().is_some_and(|d| d.trim().is_empty()) {
        return Err(invalid.at("checkpoint.dir", "must not be empty"));
    }
    Ok(())
}

/// `[observability]`: the HTTP endpoint and the health rules (see [`crate::health`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// Address to serve `/metrics`, `/healthz`, `/readyz` and the status page on
    /// (`127.0.0.1:9464`); off when absent (`tidemark run --http` overrides it).
    #[serde(default)]
    pub http: Option<String>,
    /// Not ready when no commit landed for this many checkpoint intervals while records wait.
    #[serde(default = "default_commit_stall_intervals")]
    pub commit_stall_intervals: u32,
    /// Not ready (dedup only) when the watermark has not moved for this long while records
    /// were read, in ms.
    #[serde(default = "default_watermark_stuck_ms")]
    pub watermark_stuck_ms: u64,
}

fn default_commit_stall_intervals() -> u32 {
    30
}

fn default_watermark_stuck_ms() -> u64 {
    600_000
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            http: None,
            commit_stall_intervals: default_commit_stall_intervals(),
            watermark_stuck_ms: default_watermark_stuck_ms(),
        }
    }
}

impl ObservabilityConfig {
    /// How long without a commit is a stall, for a checkpoint interval of `interval`.
    pub fn commit_stall_after(&self, interval: Duration) -> Duration {
        interval * self.commit_stall_intervals
    }

    /// How long an unmoving watermark is tolerated while records are read.
    pub fn watermark_stuck_after(&self) -> Duration {
        Duration::from_millis(self.watermark_stuck_ms)
    }
}

/// `[observability]`: a socket address (when given) and positive thresholds.
fn check_observability(o: &ObservabilityConfig, invalid: &Invalid) -> Result<(), ConfigError> {
    if let Some(addr) = &o.http {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid.at(
                "observability.http",
                format!("must be an address and port such as \"127.0.0.1:9464\", got {addr:?}"),
            ));
        }
    }
    if o.commit_stall_intervals == 0 {
        return Err(invalid.at(
            "observability.commit_stall_intervals",
            "must be greater than 0",
        ));
    }
    if o.watermark_stuck_ms == 0 {
        return Err(invalid.at("observability.watermark_stuck_ms", "must be greater than 0"));
    }
    Ok(())
}

/// `[errors]`: a record size limit between 1 and what one WAL frame holds.
fn check_errors(errors: &ErrorsConfig, invalid: &Invalid) -> Result<(), ConfigError> {
    if let Err(why) = crate::quarantine::Quarantine::parse(&errors.quarantine) {
        return Err(invalid.at("errors.quarantine", why));
    }
    if !errors.quarantine.is_empty() && errors.on_invalid_record == OnInvalidRecord::Fail {
        return Err(invalid.at(
            "errors.quarantine",
            "needs errors.on_invalid_record = \"dead_letter\" or \"skip\" (a quarantined record is never written to the table, and must not stop the pipeline)",
        ));
    }
    if errors.max_record_bytes == 0 {
        return Err(invalid.at("errors.max_record_bytes", "must be greater than 0"));
    }
    if errors.max_record_bytes > MAX_RECORD_BYTES {
        return Err(invalid.at(
            "errors.max_record_bytes",
            format!(
                "is {}, more than one WAL frame holds ({MAX_RECORD_BYTES} bytes of key + value); \
                 larger records are dead-lettered as too_large anyway",
                errors.max_record_bytes
            ),
        ));
    }
    Ok(())
}

/// `[dedup]`: a key of configured columns (or the Kafka key alone), an event-time column of a
/// usable type, and limits in range.
fn check_dedup(
    d: &DedupConfig,
    columns: &[ColumnConfig],
    invalid: &Invalid,
) -> Result<(), ConfigError> {
    if d.key.is_empty() {
        return Err(invalid.at(
            "dedup.key",
            "must name at least one column (or \"_kafka_key\")",
        ));
    }
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    for k in &d.key {
        if k == KAFKA_KEY {
            if d.key.len() > 1 {
                return Err(invalid.at(
                    "dedup.key",
                    "\"_kafka_key\" cannot be combined with columns",
                ));
            }
        } else if !names.contains(&k.as_str()) {
            return Err(invalid.at(
                "dedup.key",
                format!(
                    "names {k:?}, which is not a configured column (columns: {})",
                    names.join(", ")
                ),
            ));
        }
    }
    if d.event_time != COL_TIMESTAMP {
        match columns.iter().find(|c| c.name == d.event_time) {
            Some(c) if matches!(c.kind, ColumnType::Timestamp | ColumnType::Long) => {}
            Some(c) => {
                return Err(invalid.at(
                    "dedup.event_time",
                    format!(
                        "column {:?} is {:?}; it must be a timestamp or a long",
                        c.name, c.kind
                    ),
                ))
            }
            None => {
                return Err(invalid.at(
                    "dedup.event_time",
                    format!(
                        "names {:?}, which is neither a configured column nor \"{COL_TIMESTAMP}\"",
                        d.event_time
                    ),
                ))
            }
        }
    }
    if d.max_event_time_skew_ms > MAX_EVENT_TIME_SKEW_MS {
        return Err(invalid.at(
            "dedup.max_event_time_skew_ms",
            format!(
                "is {}; at most {MAX_EVENT_TIME_SKEW_MS} (100 years)",
                d.max_event_time_skew_ms
            ),
        ));
    }
    if d.idle_timeout_ms == 0 {
        return Err(invalid.at("dedup.idle_timeout_ms", "must be greater than 0"));
    }
    if d.expected_keys > MAX_EXPECTED_KEYS {
        return Err(invalid.at(
            "dedup.expected_keys",
            format!(
                "is {}; at most {MAX_EXPECTED_KEYS} (its table takes ~57 bytes per expected key)",
                d.expected_keys
            ),
        ));
    }
    Ok(())
}

impl ResolvedPaths {
    /// Resolves the table, the dead-letter table (errors name `sink.table_uri` and
    /// `errors.dead_letter_table`) and the state directory against `config_path`'s directory.
    fn resolve(
        pipeline_id: &str,
        sink: &SinkConfig,
        checkpoint: &CheckpointConfig,
        errors: &ErrorsConfig,
        config_path: &Path,
    ) -> Result<Self, ConfigError> {
        let table_url = resolve_table(sink.table_uri.trim(), config_path, "sink.table_uri")?;
        let dead_letter_raw = match &errors.dead_letter_table {
            Some(t) => t.trim().to_string(),
            None => format!(
                "{}_dead_letters",
                sink.table_uri.trim().trim_end_matches('/')
            ),
        };
        let dead_letter_url =
            resolve_table(&dead_letter_raw, config_path, "errors.dead_letter_table")?;
        let dir = match &checkpoint.dir {
            Some(d) => config_dir(config_path).join(d.trim()),
            None => config_dir(config_path).join(".tidemark").join(pipeline_id),
        };
        let state_dir = std::path::absolute(&dir).unwrap_or(dir);
        Ok(Self {
            table_url,
            dead_letter_url,
            state_dir,
            replica_url: None,
        })
    }
}

impl PipelineConfig {
    /// Delta columns for creating the table: configured columns, then source columns if on.
    pub fn delta_columns(&self) -> Vec<StructField> {
        let mut out: Vec<StructField> = self
            .sink
            .columns
            .iter()
            .map(|c| StructField::new(c.name.clone(), c.kind.delta(), c.nullable))
            .collect();
        if self.sink.source_columns {
            out.extend([
                StructField::new(COL_TOPIC, DeltaType::STRING, false),
                StructField::new(COL_PARTITION, DeltaType::INTEGER, false),
                StructField::new(COL_OFFSET, DeltaType::LONG, false),
                StructField::new(COL_TIMESTAMP, DeltaType::TIMESTAMP, true),
            ]);
        }
        out
    }

    /// Arrow fields of the configured columns (to compare with an existing table).
    pub fn arrow_fields(&self) -> Vec<Field> {
        self.sink
            .columns
            .iter()
            .map(|c| Field::new(c.name.clone(), c.kind.arrow(), c.nullable))
            .collect()
    }
}

/// The directory relative locations in `config_path` are resolved against (`.` for a bare
/// file name).
fn config_dir(config_path: &Path) -> PathBuf {
    config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A table location: `raw` as given if it is a URL, else a path resolved against the config
/// file's directory. Errors name `setting`.
fn resolve_table(raw: &str, config_path: &Path, setting: &str) -> Result<Url, ConfigError> {
    if raw.contains("://") {
        return Url::parse(raw).map_err(|e| ConfigError::Invalid {
            path: config_path.to_path_buf(),
            setting: setting.into(),
            message: format!("{raw:?} is not a valid URL: {e}"),
        });
    }

    let joined = config_dir(config_path).join(raw);
    let absolute = std::path::absolute(&joined).unwrap_or(joined);
    Url::from_directory_path(&absolute).map_err(|()| ConfigError::Invalid {
        path: config_path.to_path_buf(),
        setting: setting.into(),
        message: format!("{} is not a usable directory path", absolute.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
pipeline_id = "orders"
[source]
brokers = "127.0.0.1:9092"
topics = ["orders"]
[sink]
table_uri = "tables/orders"
[[sink.columns]]
name = "id"
type = "string"
nullable = false
[[sink.columns]]
name = "amount"
type = "double"
"#;

    fn parse(text: &str) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::parse(text, Path::new("/etc/tidemark/pipeline.toml"))
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.checkpoint.interval_ms, 1000);
        assert_eq!(c.checkpoint.wal_sync, WalSync::OnSeal);
        assert_eq!(
            c.paths.state_dir,
            Path::new("/etc/tidemark/.tidemark/orders")
        );
        assert_eq!(c.errors.on_invalid_record, OnInvalidRecord::DeadLetter);
        assert_eq!(
            c.paths.dead_letter_url.as_str(),
            "file:///etc/tidemark/tables/orders_dead_letters/"
        );
        assert!(c.sink.source_columns);
        assert_eq!(c.delta_columns().len(), 6);
        assert_eq!(
            c.paths.table_url.as_str(),
            "file:///etc/tidemark/tables/orders/"
        );
    }

    /// A worker of a shared pipeline: its own appId and state directory, named in errors.
    #[test]
    fn a_worker_gets_its_own_app_id_and_state_dir_and_needs_a_group() {
        let grouped = GOOD.replace("[source]\n", "[source]\ngroup = \"orders-workers\"\n");
        let mut c = parse(&grouped).unwrap();
        assert!(
            c.source.static_membership,
            "static membership is the default"
        );
        c.as_worker("w-1").unwrap();
        assert_eq!(c.pipeline_id, "orders.w-1");
        assert_eq!(
            c.paths.state_dir,
            Path::new("/etc/tidemark/.tidemark/orders/workers/w-1")
        );
        let w = c.worker.as_ref().unwrap();
        assert_eq!(
            (w.pipeline_id.as_str(), w.group.as_str()),
            ("orders", "orders-workers")
        );

        let err = parse(GOOD)
            .unwrap()
            .as_worker("w1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("source.group") && err.contains("--worker-id"),
            "{err}"
        );
        let err = parse(&grouped)
            .unwrap()
            .as_worker("a/b")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--worker-id") && err.contains("\"a/b\""),
            "{err}"
        );
        // "p" + "x.w1" and "p.x" + "w1" would share the appId "p.x.w1".
        let err = parse(&grouped)
            .unwrap()
            .as_worker("x.w1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--worker-id") && err.contains("'.'"), "{err}");
        let err = parse(&GOOD.replace("[source]\n", "[source]\ngroup = \" \"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("source.group") && err.contains("empty"),
            "{err}"
        );
    }

    /// A group with `[dedup]` needs the rows to name their partition and hold the key: the
    /// state of a partition that moves is rebuilt from them. Refused otherwise, naming the
    /// setting.
    #[test]
    fn a_group_with_dedup_needs_source_columns_and_a_key_in_the_rows() {
        let dedup = |key: &str| {
            format!(
                "\n[dedup]\nkey = [\"{key}\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 1\n"
            )
        };
        let group = GOOD.replace("[source]\n", "[source]\ngroup = \"g\"\n");
        let c = parse(&format!("{group}{}", dedup("id"))).unwrap();
        assert!(c.dedup.is_some() && c.source.group.is_some());
        let err = parse(&format!("{group}{}", dedup("_kafka_key")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dedup.key") && err.contains("source.group"),
            "{err}"
        );
        let no_columns = group.replace("[sink]\n", "[sink]\nsource_columns = false\n");
        let err = parse(&format!("{no_columns}{}", dedup("id")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sink.source_columns"), "{err}");
        let one_process = GOOD.replace("[sink]\n", "[sink]\nsource_columns = false\n");
        assert!(
            parse(&format!("{one_process}{}", dedup("_kafka_key"))).is_ok(),
            "one process needs neither"
        );
    }

    /// `[replica] table_uri` is optional, resolved like the table, and may not be the table.
    #[test]
    fn a_replica_is_resolved_like_the_table_and_may_not_be_it() {
        assert_eq!(parse(GOOD).unwrap().paths.replica_url, None);
        let c = parse(&format!("{GOOD}\n[replica]\ntable_uri = \"dr/orders\"\n")).unwrap();
        assert_eq!(
            c.paths.replica_url.as_ref().map(Url::as_str),
            Some("file:///etc/tidemark/dr/orders/")
        );
        let err = parse(&format!(
            "{GOOD}\n[replica]\ntable_uri = \"/etc/tidemark/tables/orders\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("replica.table_uri") && err.contains("not be the table"),
            "{err}"
        );
        let err = parse(&format!("{GOOD}\n[replica]\nuri = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("uri"), "{err}");
    }

    /// Locations are resolved once, at load: URLs as given, paths against the config file's
    /// directory (`.` for a bare file name), and a bad one is refused naming its setting.
    #[test]
    fn locations_are_resolved_at_load_against_the_config_file() {
        let text = GOOD.replace("\"tables/orders\"", "\"s3://bucket/orders/\"")
            + "\n[errors]\ndead_letter_table = \" dlq \"\n[checkpoint]\ndir = \"state\"\n";
        let c = parse(&text).unwrap();
        assert_eq!(c.paths.table_url.as_str(), "s3://bucket/orders/");
        assert_eq!(
            c.paths.dead_letter_url.as_str(),
            "file:///etc/tidemark/dlq/"
        );
        assert_eq!(c.paths.state_dir, Path::new("/etc/tidemark/state"));

        let url = GOOD.replace("\"tables/orders\"", "\"s3://bucket/orders/\"");
        let c = parse(&url).unwrap();
        assert_eq!(
            c.paths.dead_letter_url.as_str(),
            "s3://bucket/orders_dead_letters"
        );

        let bare = PipelineConfig::parse(GOOD, Path::new("pipeline.toml")).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(bare.paths.state_dir, cwd.join(".tidemark").join("orders"));
        assert_eq!(
            bare.paths.table_url,
            Url::from_directory_path(cwd.join("tables").join("orders")).unwrap()
        );

        for (text, setting) in [
            (
                GOOD.replace("\"tables/orders\"", "\"http://[::1\""),
                "setting `sink.table_uri`",
            ),
            (
                format!("{GOOD}\n[errors]\ndead_letter_table = \"http://[::1\"\n"),
                "setting `errors.dead_letter_table`",
            ),
        ] {
            let err = parse(&text).expect_err(setting).to_string();
            assert!(err.contains(setting), "{setting:?} not in {err:?}");
            assert!(err.contains("is not a valid URL"), "{err}");
        }
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases = [
            (
                GOOD.replace("\"orders\"\n[source]", "\"a b\"\n[source]"),
                "pipeline_id",
            ),
            (
                GOOD.replace("topics = [\"orders\"]", "topics = []"),
                "source.topics",
            ),
            (
                GOOD.replace("type = \"double\"", "type = \"dubble\""),
                "dubble",
            ),
            (
                GOOD.replace("name = \"amount\"", "name = \"id\""),
                "sink.columns[1].name",
            ),
            (
                GOOD.replace("name = \"amount\"", "name = \"_kafka_x\""),
                "sink.columns[1].name",
            ),
            (
                format!("{GOOD}\n[checkpoint]\ninterval_ms = 0\n"),
                "checkpoint.interval_ms",
            ),
            (
                format!("{GOOD}\n[checkpoint]\nmax_bytes = 0\n"),
                "checkpoint.max_bytes",
            ),
            (
                format!("{GOOD}\n[checkpoint]\nmax_buffered_bytes = 0\n"),
                "checkpoint.max_buffered_bytes",
            ),
            (
                format!("{GOOD}\n[checkpoint]\nwal_segment_bytes = 10\n"),
                "checkpoint.wal_segment_bytes",
            ),
            (
                format!("{GOOD}\n[checkpoint]\nwal_sync = \"sometimes\"\n"),
                "sometimes",
            ),
            (
                format!("{GOOD}\n[checkpoint]\nintervl_ms = 5\n"),
                "intervl_ms",
            ),
            (
                format!("{GOOD}\n[batch]\ninterval_ms = 5\n"),
                "[checkpoint]",
            ),
            (
                GOOD.replace(
                    "topics = [\"orders\"]",
                    "topics = [\"orders\"]\nproperties = { \"enable.auto.commit\" = \"true\" }",
                ),
                "enable.auto.commit",
            ),
            (
                format!("{GOOD}\n[errors]\non_invalid_record = \"ignore\"\n"),
                "ignore",
            ),
            (
                format!("{GOOD}\n[dedup]\nkey = [\"nope\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 1\n"),
                "dedup.key",
            ),
            (
                format!("{GOOD}\n[dedup]\nkey = [\"id\"]\nevent_time = \"amount\"\nallowed_lateness_ms = 1\n"),
                "dedup.event_time",
            ),
            (
                format!("{GOOD}\n[dedup]\nkey = [\"_kafka_key\", \"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 1\n"),
                "dedup.key",
            ),
            (
                format!("{GOOD}\n[errors]\nmax_record_bytes = 0\n"),
                "errors.max_record_bytes",
            ),
            (
                format!("{GOOD}\n[errors]\nmax_record_bytes = {}\n", MAX_RECORD_BYTES + 1),
                "errors.max_record_bytes",
            ),
            (
                format!("{GOOD}\n[errors]\nmax_record_bytes = 67108864\n"),
                "more than one WAL frame holds",
            ),
            (
                format!("{GOOD}\n[dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 1\nmax_event_time_skew_ms = {}\n", MAX_EVENT_TIME_SKEW_MS + 1),
                "dedup.max_event_time_skew_ms",
            ),
            (
                format!("{GOOD}\n[dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 1\nexpected_keys = {}\n", MAX_EXPECTED_KEYS + 1),
                "dedup.expected_keys",
            ),
            (
                GOOD.replace("brokers = \"127.0.0.1:9092\"", "brokers = \" \""),
                "source.brokers",
            ),
            (
                GOOD.replace("topics = [\"orders\"]", "topics = [\"orders\", \"\"]"),
                "source.topics",
            ),
            (
                GOOD.replace("table_uri = \"tables/orders\"", "table_uri = \"  \""),
                "sink.table_uri",
            ),
            (
                GOOD.replace("name = \"amount\"", "name = \"\""),
                "sink.columns[1].name",
            ),
            (
                format!("{GOOD}\n[checkpoint]\nretain = 0\n"),
                "checkpoint.retain",
            ),
            (
                format!("{GOOD}\n[checkpoint]\ndir = \" \"\n"),
                "checkpoint.dir",
            ),
            (
                format!("{GOOD}\n[checkpoint]\nenabled = false\n[dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 1\n"),
                "checkpoint.enabled",
            ),
            (
                format!("{GOOD}\n[dedup]\nkey = []\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 1\n"),
                "dedup.key",
            ),
            (
                format!("{GOOD}\n[dedup]\nkey = [\"id\"]\nevent_time = \"nope\"\nallowed_lateness_ms = 1\n"),
                "dedup.event_time",
            ),
            (
                format!("{GOOD}\n[dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 1\nidle_timeout_ms = 0\n"),
                "dedup.idle_timeout_ms",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text).expect_err(needle).to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
            assert!(err.contains("pipeline.toml"), "file not named in {err:?}");
        }
    }

    #[test]
    fn the_limits_themselves_are_accepted_and_skew_defaults_to_an_hour() {
        let c = parse(&format!(
            "{GOOD}\n[errors]\nmax_record_bytes = {MAX_RECORD_BYTES}\n[dedup]\nkey = [\"id\"]\nevent_time = \"_kafka_timestamp\"\nallowed_lateness_ms = 1\n"
        ))
        .unwrap();
        assert_eq!(c.errors.max_record_bytes, MAX_RECORD_BYTES);
        assert_eq!(c.dedup.unwrap().max_event_time_skew_ms, 3_600_000);
    }

    /// Item 12: ids that are no plain file-name component, or that hold the data-file
    /// name pattern, are refused naming `pipeline_id`.
    #[test]
    fn pipeline_ids_that_break_paths_or_file_names_are_refused() {
        let bad = [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a\\b",
            "a b",
            " a",
            "a\tb",
            "a\nb",
            "a\u{7}b",
            "a\u{0}b",
            "ordérs",
            "orders-e000000000001-p0000",
            "x-e123456789012-p",
            "x-e123456789012-p9-y",
        ];
        for id in bad {
            let quoted = toml::Value::String(id.to_string()).to_string();
            let text = GOOD.replace("\"orders\"\n[source]", &format!("{quoted}\n[source]"));
            let err = parse(&text).expect_err(id).to_string();
            assert!(err.contains("setting `pipeline_id`"), "{id:?}: {err}");
        }
        let long = "a".repeat(MAX_PIPELINE_ID_BYTES + 1);
        assert!(pipeline_id_problem(&long).is_some());
        for id in [
            "orders",
            "orders-to-delta",
            "a.b_c-1",
            ".hidden",
            "...",
            "x-e12345678901-p",
            "x-e1234567890123",
            "x-e123456789012p",
            "e2e-test",
            &"a".repeat(MAX_PIPELINE_ID_BYTES),
        ] {
            assert_eq!(pipeline_id_problem(id), None, "{id:?}");
            let text = GOOD.replace("\"orders\"\n[source]", &format!("{id:?}\n[source]"));
            parse(&text).unwrap_or_else(|e| panic!("{id:?}: {e}"));
        }
    }

    /// The rule above is what keeps file names apart: no data file of another valid pipeline
    /// parses as one of this pipeline's.
    #[test]
    fn valid_ids_never_read_each_others_data_files() {
        use tidemark_connectors::delta::{data_file_name, parse_data_file_name, RunId};
        use tidemark_connectors::Epoch;
        let ids = [
            "a",
            "a-e",
            "a-e1",
            "a-e000000000001",
            "a-e000000000001-",
            "a-e00000000000",
            "a-p",
            "a-",
            "a--e000000000001",
            "a.e000000000001-p0000",
        ];
        for x in ids {
            assert_eq!(pipeline_id_problem(x), None, "{x:?}");
            for y in ids.iter().filter(|y| **y != x) {
                for epoch in [0, 1, 999_999_999_999] {
                    let name = data_file_name(y, Epoch::new(epoch), 0, RunId::from_u32(7));
                    assert_eq!(parse_data_file_name(x, &name), None, "{x:?} reads {name:?}");
                }
            }
        }
    }
}
