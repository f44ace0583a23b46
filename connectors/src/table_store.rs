//! [`TableStore`]: the object store a table URI names, opened the same way for every table
//! operation (the pipeline's sink, `status`, audit, dedup rebuild, replication, backups, verify,
//! restore, vacuum).
//!
//! - A plain path or a `file://` URL: a [`DurableLocalStore`] (every write temp file + fsync +
//!   rename + directory fsync) rooted at `/`, the table's directory as the root prefix.
//! - `s3://bucket/prefix` (also `s3a://`): an [`object_store::aws::AmazonS3`] for the bucket,
//!   configured from the usual AWS settings ([`S3Settings`]: environment, then the shared
//!   credentials/config files' profile), with conditional writes (`If-None-Match: *`) for
//!   put-if-absent and bounded exponential-backoff retries of transient errors ([`S3_RETRY`]).
//!
//! Delta commits on object storage are safe without an external lock only when the store
//! refuses a second put-if-absent of the same key; [`verify_put_if_absent`] checks that once per
//! writer before its first commit and refuses to go on otherwise (a store that silently
//! overwrites would let two writers both "win" a version: a lost commit).
//!
//! Credentials are never logged: [`TableStore`]'s `Debug`/`Display` and [`S3Settings::describe`]
//! name the bucket, endpoint, region and where the credentials came from, never their values.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};
use tidemark_fs::SharedFs;
use tracing::{debug, info};
use url::Url;

use crate::durable_store::DurableLocalStore;

/// Retries of transient S3 errors (5xx, throttling, timeouts, dropped connections): at most 10
/// attempts after the first, waits from 100 ms doubling up to 15 s, and no retry started after
/// 3 minutes. A request still failing after that fails the operation (the epoch is retried by
/// the pipeline's own recovery; nothing is half-written: S3 makes an object visible whole or not
/// at all, and a multipart upload only at its completion).
pub const S3_RETRY: RetryPolicy = RetryPolicy {
    max_retries: 10,
    init_backoff: Duration::from_millis(100),
    max_backoff: Duration::from_secs(15),
    retry_timeout: Duration::from_secs(180),
};

/// The retry policy of the S3 client (see [`S3_RETRY`]); `TIDEMARK_S3_MAX_RETRIES` overrides
/// the attempt count (tests and operators who prefer to fail fast).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// The first wait.
    pub init_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
    /// No retry is started after this long since the first attempt.
    pub retry_timeout: Duration,
}

impl RetryPolicy {
    fn config(self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: self.init_backoff,
                max_backoff: self.max_backoff,
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }
}

/// A table location that cannot be opened, naming it and the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TableStoreError {
    /// Not a scheme Tidemark can open.
    #[error("table {uri}: the scheme {scheme}:// is not supported (use a local path, file:// or s3://bucket/prefix)")]
    UnsupportedScheme {
        /// The location as given.
        uri: String,
        /// Its scheme.
        scheme: String,
    },
    /// The path cannot be made absolute or is not valid as an object-store path.
    #[error("table {uri}: {reason}")]
    BadPath {
        /// The location as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The S3 client could not be built from the settings.
    #[error("table {uri}: cannot configure S3 ({settings}): {source}")]
    S3Config {
        /// The location.
        uri: String,
        /// Where the settings came from (no secrets).
        settings: String,
        /// The client's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// The store accepted a second put-if-absent of one key, or does not implement it.
    #[error("table {uri}: the store does not refuse a second put-if-absent ({detail}); two writers could both commit one Delta version and one commit would be lost, so Tidemark refuses to write this table. Use S3 or an S3-compatible store with conditional writes (If-None-Match: *)")]
    NoPutIfAbsent {
        /// The location.
        uri: String,
        /// What the probe saw.
        detail: String,
    },
    /// The probe itself failed (no access, no bucket, the endpoint down).
    #[error("table {uri}: cannot write the put-if-absent probe {probe}: {source}")]
    Probe {
        /// The location.
        uri: String,
        /// The probe's object path.
        probe: String,
        /// The store's error.
        #[source]
        source: Box<object_store::Error>,
    },
}

/// The store a table lives in and the table's root prefix inside it. Cheap to clone.
#[derive(Clone)]
pub struct TableStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// The store the URL's scheme asks for at the store's root (what deltalake wants as its
    /// "root store": it adds the table's prefix itself).
    url: Url,
    local_dir: Option<PathBuf>,
    settings: Option<String>,
}

impl fmt::Debug for TableStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableStore")
            .field("url", &self.url.as_str())
            .field("settings", &self.settings)
            .finish()
    }
}

impl TableStore {
    /// Opens the table at `url`: `file://` through `fs` (tests pass a `FaultFs`), `s3://`
    /// with [`S3Settings::from_process`]. Nothing is read or written yet.
    pub fn open(url: &Url, fs: SharedFs) -> Result<Self, TableStoreError> {
        match url.scheme() {
            "file" => {
                let dir = url.to_file_path().map_err(|()| TableStoreError::BadPath {
                    uri: url.to_string(),
                    reason: "not a local file URL".into(),
                })?;
                Self::local(&dir, fs).map_err(|reason| TableStoreError::BadPath {
                    uri: url.to_string(),
                    reason,
                })
            }
            "s3" | "s3a" => Self::s3(url, &S3Settings::from_process()),
            other => Err(TableStoreError::UnsupportedScheme {
                uri: url.to_string(),
                scheme: other.to_string(),
            }),
        }
    }

    /// Opens a table given as a `file://`/`s3://` URL or a plain local path (made absolute
    /// against the working directory; it need not exist yet).
    pub fn parse(uri: &str, fs: SharedFs) -> Result<Self, TableStoreError> {
        match Url::parse(uri) {
            // A one-letter "scheme" is a Windows drive, never a URL here.
            Ok(url) if url.scheme().len() > 1 => Self::open(&url, fs),
            _ => Self::local(FsPath::new(uri), fs).map_err(|reason| TableStoreError::BadPath {
                uri: uri.to_string(),
                reason,
            }),
        }
    }

    /// The local directory `dir` (absolute or relative to the working directory).
    fn local(dir: &FsPath, fs: SharedFs) -> Result<Self, String> {
        let abs = std::path::absolute(dir).map_err(|e| format!("cannot make it absolute: {e}"))?;
        let abs = normalize(&abs);
        let root = Path::from_absolute_path(&abs).map_err(|e| e.to_string())?;
        let url = Url::from_directory_path(&abs)
            .map_err(|()| format!("{} is not a usable directory path", abs.display()))?;
        Ok(Self {
            store: Arc::new(DurableLocalStore::new(fs)),
            root,
            url,
            local_dir: Some(abs),
            settings: None,
        })
    }

    /// An `s3://bucket/prefix` table with `settings`.
    pub fn s3(url: &Url, settings: &S3Settings) -> Result<Self, TableStoreError> {
        let uri = url.to_string();
        let bucket =
            url.host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| TableStoreError::BadPath {
                    uri: uri.clone(),
                    reason: "no bucket (expected s3://bucket/prefix)".into(),
                })?;
        let prefix = url.path().trim_matches('/');
        let root = Path::parse(prefix).map_err(|e| TableStoreError::BadPath {
            uri: uri.clone(),
            reason: e.to_string(),
        })?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(settings.retry.config());
        for (key, value) in &settings.options {
            builder = builder.with_config(*key, value);
        }
        let store = builder
            .build()
            .map_err(|source| TableStoreError::S3Config {
                uri: uri.clone(),
                settings: settings.describe(),
                source: Box::new(source),
            })?;
        register_s3_log_store();
        let normalized =
            Url::parse(&format!("s3://{bucket}/{root}")).map_err(|e| TableStoreError::BadPath {
                uri: uri.clone(),
                reason: e.to_string(),
            })?;
        debug!(table = %normalized, settings = %settings.describe(), "opened S3 table store");
        Ok(Self {
            store: Arc::new(store),
            root,
            url: normalized,
            local_dir: None,
            settings: Some(settings.describe()),
        })
    }

    /// The store the table is in (rooted at the bucket, or `/` for local tables).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The table's root prefix inside [`Self::store`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The table's URL (`file:///dir/` or `s3://bucket/prefix`), as deltalake opens it.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The local directory of a local table (`None` for object stores).
    pub fn local_dir(&self) -> Option<&FsPath> {
        self.local_dir.as_deref()
    }

    /// True for tables on an object store (not the local disk).
    pub fn is_remote(&self) -> bool {
        self.local_dir.is_none()
    }

    /// Where the store's settings came from (no secrets), for logs and errors.
    pub fn settings(&self) -> Option<&str> {
        self.settings.as_deref()
    }
}

/// Makes deltalake accept `s3://` URLs with a store Tidemark built (its default log store:
/// commits by put-if-absent, which [`TableStore::s3`] configures). Idempotent.
pub fn register_s3_log_store() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let factories = deltalake::logstore::logstore_factories();
        for scheme in ["s3://", "s3a://"] {
            if let Ok(url) = Url::parse(scheme) {
                factories.insert(url, Arc::new(PutIfAbsentLogStoreFactory));
            }
        }
    });
}

/// deltalake's default log store (commit = put-if-absent of `_delta_log/<version>.json`) for
/// the stores Tidemark builds; deltalake's own factory for it is private.
#[derive(Debug)]
struct PutIfAbsentLogStoreFactory;

impl deltalake::logstore::LogStoreFactory for PutIfAbsentLogStoreFactory {
    fn with_options(
        &self,
        prefixed_store: deltalake::logstore::ObjectStoreRef,
        root_store: deltalake::logstore::ObjectStoreRef,
        location: &Url,
        options: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
        Ok(deltalake::logstore::default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// Checks that `table`'s store refuses a second put-if-absent of one key (see the module
/// documentation): writes a probe object under the table's `_tidemark_probe/` twice, expects the
/// second to fail with "already exists", deletes it. Local tables pass without a probe (the
/// durable store links without replacing).
pub async fn verify_put_if_absent(table: &TableStore) -> Result<(), TableStoreError> {
    if !table.is_remote() {
        return Ok(());
    }
    let uri = table.url().to_string();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let name = format!("{}-{nanos}", std::process::id());
    let probe: Path = table
        .root()
        .parts()
        .chain(Path::from("_tidemark_probe").parts())
        .chain(Path::from(name.as_str()).parts())
        .collect();
    let create = || PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    let store = table.store();
    let probe_err = |source| TableStoreError::Probe {
        uri: uri.clone(),
        probe: probe.to_string(),
        source: Box::new(source),
    };
    // The first write is settled (the name is unique: "already exists" with our bytes is our
    // own write whose answer was lost); the second must be refused.
    match put_settled(
        store.as_ref(),
        &probe,
        bytes::Bytes::from_static(b"first"),
        PutMode::Create,
    )
    .await
    {
        Ok(ConditionalPut::Written) => {}
        Ok(ConditionalPut::Refused) => {
            return Err(TableStoreError::Probe {
                uri: uri.clone(),
                probe: probe.to_string(),
                source: Box::new(object_store::Error::AlreadyExists {
                    path: probe.to_string(),
                    source: "a probe object of this name held other bytes".into(),
                }),
            })
        }
        Err(e) => return Err(probe_err(e)),
    }
    let second = store
        .put_opts(&probe, PutPayload::from_static(b"second"), create())
        .await;
    let cleanup = store.delete(&probe).await;
    let verdict = match second {
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::Precondition { .. }) => Ok(()),
        Ok(_) => Err(TableStoreError::NoPutIfAbsent {
            uri: uri.clone(),
            detail: "the second write succeeded".into(),
        }),
        Err(object_store::Error::NotImplemented { .. })
        | Err(object_store::Error::NotSupported { .. }) => Err(TableStoreError::NoPutIfAbsent {
            uri: uri.clone(),
            detail: "conditional writes are not implemented".into(),
        }),
        Err(other) => Err(probe_err(other)),
    };
    if let Err(e) = cleanup {
        debug!(probe = %probe, error = %e, "could not delete the put-if-absent probe");
    }
    if verdict.is_ok() {
        info!(table = %uri, "the store refuses a second put-if-absent: concurrent commits are safe");
    }
    verdict
}

/// What a conditional write came to, once its answer is known or was looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionalPut {
    /// The object holds exactly the bytes written (this write, or an earlier attempt of it
    /// whose answer was lost).
    Written,
    /// The condition failed: the object holds something else (another writer's).
    Refused,
}

/// Writes `bytes` to `path` under `mode` (create-only or if-match) and settles the ambiguous
/// refusal. The S3 client retries a request whose answer was lost (a 5xx, a dropped
/// connection), so a write that landed comes back from the retry as "already exists" or
/// "precondition failed". On those the object is read back: if it holds exactly `bytes` the
/// write counts as [`ConditionalPut::Written`], otherwise as [`ConditionalPut::Refused`]. Any
/// other error is returned as it came (it may still have landed: callers that delete files
/// after a failure check the table first). Callers make `bytes` unique to the attempt (a
/// token, a timestamp, unique file names), so equal bytes mean this writer's write.
pub async fn put_settled(
    store: &dyn ObjectStore,
    path: &Path,
    bytes: bytes::Bytes,
    mode: PutMode,
) -> Result<ConditionalPut, object_store::Error> {
    let put = store
        .put_opts(
            path,
            PutPayload::from(bytes.clone()),
            PutOptions {
                mode,
                ..PutOptions::default()
            },
        )
        .await;
    let error = match put {
        Ok(_) => return Ok(ConditionalPut::Written),
        Err(
            e @ (object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }),
        ) => e,
        Err(other) => return Err(other),
    };
    let held = match store.get(path).await {
        Ok(got) => got.bytes().await.ok(),
        Err(_) => None,
    };
    if held.as_ref() == Some(&bytes) {
        debug!(object = %path, "a conditional write whose answer was lost had landed: {error}");
        return Ok(ConditionalPut::Written);
    }
    Ok(ConditionalPut::Refused)
}

/// The S3 client's settings, read once from the usual AWS places, with where each came from
/// (for logs, never the secret values).
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    options: Vec<(AmazonS3ConfigKey, String)>,
    sources: BTreeMap<&'static str, String>,
    retry: RetryPolicy,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The environment variables read, with the client setting each sets (the AWS CLI's names, plus
/// object_store's `AWS_ALLOW_HTTP` and `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`).
const ENV_KEYS: &[(&str, AmazonS3ConfigKey)] = &[
    ("AWS_ACCESS_KEY_ID", AmazonS3ConfigKey::AccessKeyId),
    ("AWS_SECRET_ACCESS_KEY", AmazonS3ConfigKey::SecretAccessKey),
    ("AWS_SESSION_TOKEN", AmazonS3ConfigKey::Token),
    ("AWS_REGION", AmazonS3ConfigKey::Region),
    ("AWS_DEFAULT_REGION", AmazonS3ConfigKey::DefaultRegion),
    ("AWS_ENDPOINT_URL_S3", AmazonS3ConfigKey::Endpoint),
    ("AWS_ENDPOINT_URL", AmazonS3ConfigKey::Endpoint),
    ("AWS_ENDPOINT", AmazonS3ConfigKey::Endpoint),
    (
        "AWS_ALLOW_HTTP",
        AmazonS3ConfigKey::Client(object_store::ClientConfigKey::AllowHttp),
    ),
    (
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
        AmazonS3ConfigKey::VirtualHostedStyleRequest,
    ),
    ("AWS_SKIP_SIGNATURE", AmazonS3ConfigKey::SkipSignature),
    (
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        AmazonS3ConfigKey::ContainerCredentialsRelativeUri,
    ),
    (
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        AmazonS3ConfigKey::WebIdentityTokenFile,
    ),
    ("AWS_ROLE_ARN", AmazonS3ConfigKey::RoleArn),
];

/// Settings whose values are never shown.
fn is_secret(key: AmazonS3ConfigKey) -> bool {
    matches!(
        key,
        AmazonS3ConfigKey::SecretAccessKey | AmazonS3ConfigKey::Token
    )
}

impl S3Settings {
    /// The settings of this process: its environment, then the profile named by `AWS_PROFILE`
    /// (or `default`) in `AWS_SHARED_CREDENTIALS_FILE`/`~/.aws/credentials` and
    /// `AWS_CONFIG_FILE`/`~/.aws/config` for what the environment does not set.
    pub fn from_process() -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let read = |p: &FsPath| std::fs::read_to_string(p).ok();
        Self::resolve(&|k| std::env::var(k).ok(), home.as_deref(), &read)
    }

    /// [`Self::from_process`] over any environment and file reader (pure; tested).
    pub fn resolve(
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&FsPath>,
        read: &dyn Fn(&FsPath) -> Option<String>,
    ) -> Self {
        let mut found = Found::default();
        let mut set = |key, value, source| found.set(key, value, source);
        for (var, key) in ENV_KEYS {
            if let Some(value) = env(var).filter(|v| !v.is_empty()) {
                set(*key, value, format!("${var}"));
            }
        }
        let profile = env("AWS_PROFILE")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "default".into());
        let file = |var: &str, default: &str| -> Option<PathBuf> {
            env(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| home.map(|h| h.join(".aws").join(default)))
        };
        // Credentials file sections are "[name]"; config file sections "[profile name]"
        // (and "[default]").
        if let Some(path) = file("AWS_SHARED_CREDENTIALS_FILE", "credentials") {
            if let Some(section) = read(&path).and_then(|t| ini_section(&t, &profile)) {
                for (name, key) in PROFILE_KEYS {
                    if let Some(v) = section.get(*name) {
                        set(
                            *key,
                            v.clone(),
                            format!("profile {profile} in {}", path.display()),
                        );
                    }
                }
            }
        }
        if let Some(path) = file("AWS_CONFIG_FILE", "config") {
            // "[default]", or "[profile default]" (both accepted by the AWS tools).
            let header = format!("profile {profile}");
            let text = read(&path);
            let section = text.as_deref().and_then(|t| {
                ini_section(t, &header)
                    .or_else(|| (profile == "default").then(|| ini_section(t, "default"))?)
            });
            if let Some(section) = section {
                for (name, key) in PROFILE_KEYS {
                    if let Some(v) = section.get(*name) {
                        set(
                            *key,
                            v.clone(),
                            format!("profile {profile} in {}", path.display()),
                        );
                    }
                }
            }
        }
        // An http:// endpoint (a local S3-compatible server) needs plain HTTP allowed.
        let http_endpoint = found
            .options
            .iter()
            .any(|(k, v)| *k == AmazonS3ConfigKey::Endpoint && v.starts_with("http://"));
        if http_endpoint {
            found.set(
                AmazonS3ConfigKey::Client(object_store::ClientConfigKey::AllowHttp),
                "true".into(),
                "the endpoint is http://".into(),
            );
        }
        let mut retry = S3_RETRY;
        if let Some(raw) = env("TIDEMARK_S3_MAX_RETRIES") {
            match raw.trim().parse() {
                Ok(n) => retry.max_retries = n,
                Err(_) => tracing::warn!(
                    "TIDEMARK_S3_MAX_RETRIES={raw:?} is not a whole number; using {} retries",
                    retry.max_retries
                ),
            }
        }
        Self {
            options: found.options,
            sources: found.sources,
            retry,
        }
    }

    /// The value of one setting (tests; the secrets too, so never log this).
    pub fn get(&self, key: AmazonS3ConfigKey) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// One line for logs and errors: each setting with its source, secrets as `***`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .options
            .iter()
            .map(|(key, value)| {
                let name = key_name(*key);
                let source = self.sources.get(name).map(String::as_str).unwrap_or("?");
                if is_secret(*key) || *key == AmazonS3ConfigKey::AccessKeyId {
                    format!("{name} from {source}")
                } else if *key == AmazonS3ConfigKey::Endpoint {
                    format!("{name}={} from {source}", without_userinfo(value))
                } else {
                    format!("{name}={value} from {source}")
                }
            })
            .collect();
        parts.push(format!("retries {}", self.retry.max_retries));
        if parts.len() == 1 {
            parts.insert(0, "no AWS settings found".into());
        }
        parts.join(", ")
    }
}

/// Settings found so far: the first place that sets a key wins.
#[derive(Default)]
struct Found {
    options: Vec<(AmazonS3ConfigKey, String)>,
    sources: BTreeMap<&'static str, String>,
}

impl Found {
    fn set(&mut self, key: AmazonS3ConfigKey, value: String, source: String) {
        if !self.options.iter().any(|(k, _)| *k == key) {
            self.sources.insert(key_name(key), source);
            self.options.push((key, value));
        }
    }
}

/// `url` without a `user:password@` part (never shown).
fn without_userinfo(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Keys of a profile section, with the client setting each sets.
const PROFILE_KEYS: &[(&str, AmazonS3ConfigKey)] = &[
    ("aws_access_key_id", AmazonS3ConfigKey::AccessKeyId),
    ("aws_secret_access_key", AmazonS3ConfigKey::SecretAccessKey),
    ("aws_session_token", AmazonS3ConfigKey::Token),
    ("region", AmazonS3ConfigKey::Region),
    ("endpoint_url", AmazonS3ConfigKey::Endpoint),
];

/// A short name of a setting for logs.
fn key_name(key: AmazonS3ConfigKey) -> &'static str {
    match key {
        AmazonS3ConfigKey::AccessKeyId => "access key",
        AmazonS3ConfigKey::SecretAccessKey => "secret key",
        AmazonS3ConfigKey::Token => "session token",
        AmazonS3ConfigKey::Region | AmazonS3ConfigKey::DefaultRegion => "region",
        AmazonS3ConfigKey::Endpoint => "endpoint",
        AmazonS3ConfigKey::VirtualHostedStyleRequest => "virtual-hosted-style",
        AmazonS3ConfigKey::SkipSignature => "skip-signature",
        AmazonS3ConfigKey::ContainerCredentialsRelativeUri => "container credentials",
        AmazonS3ConfigKey::WebIdentityTokenFile => "web identity token",
        AmazonS3ConfigKey::RoleArn => "role",
        AmazonS3ConfigKey::Client(object_store::ClientConfigKey::AllowHttp) => "allow-http",
        _ => "other",
    }
}

/// The `key = value` pairs of section `[name]` of an INI text (AWS shared files), `None` when
/// the section is absent.
fn ini_section(text: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let mut found = None;
    let mut current: Option<BTreeMap<String, String>> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if let Some(done) = current.take() {
                found = Some(done);
            }
            if header.trim() == name {
                current = Some(BTreeMap::new());
            }
            continue;
        }
        if let (Some(section), Some((k, v))) = (current.as_mut(), line.split_once('=')) {
            section.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    current.or(found)
}

/// Removes `.` and resolves `..` lexically (the table need not exist yet).
fn normalize(path: &FsPath) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(env: &[(&str, &str)], files: &[(&str, &str)]) -> S3Settings {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(k, v)| (PathBuf::from(k), v.to_string()))
            .collect();
        S3Settings::resolve(
            &|k| env.get(k).cloned(),
            Some(FsPath::new("/home/u")),
            &|p| files.get(p).cloned(),
        )
    }

    #[test]
    fn environment_wins_over_the_profile_and_secrets_are_never_described() {
        let s = settings(
            &[
                ("AWS_ACCESS_KEY_ID", "AKIAENV"),
                ("AWS_SECRET_ACCESS_KEY", "envsecret"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ],
            &[(
                "/home/u/.aws/credentials",
                "[default]\naws_access_key_id = AKIAFILE\naws_secret_access_key = filesecret\n",
            )],
        );
        assert_eq!(s.get(AmazonS3ConfigKey::AccessKeyId), Some("AKIAENV"));
        assert_eq!(s.get(AmazonS3ConfigKey::SecretAccessKey), Some("envsecret"));
        assert_eq!(
            s.get(AmazonS3ConfigKey::Client(
                object_store::ClientConfigKey::AllowHttp
            )),
            Some("true")
        );
        let d = s.describe();
        for secret in ["envsecret", "filesecret", "AKIAENV", "AKIAFILE"] {
            assert!(!d.contains(secret), "{d}");
        }
        assert!(
            d.contains("endpoint=http://127.0.0.1:9000 from $AWS_ENDPOINT_URL"),
            "{d}"
        );
        assert!(!format!("{s:?}").contains("envsecret"));
    }

    #[test]
    fn a_named_profile_is_read_from_both_shared_files() {
        let s = settings(
            &[("AWS_PROFILE", "dr")],
            &[
                (
                    "/home/u/.aws/credentials",
                    "[default]\naws_access_key_id = A\n[dr]\naws_access_key_id = B\naws_secret_access_key = S\n",
                ),
                (
                    "/home/u/.aws/config",
                    "[default]\nregion = us-east-1\n[profile dr]\nregion = eu-west-1\nendpoint_url = https://s3.example\n",
                ),
            ],
        );
        assert_eq!(s.get(AmazonS3ConfigKey::AccessKeyId), Some("B"));
        assert_eq!(s.get(AmazonS3ConfigKey::Region), Some("eu-west-1"));
        assert_eq!(
            s.get(AmazonS3ConfigKey::Endpoint),
            Some("https://s3.example")
        );
        assert_eq!(
            s.get(AmazonS3ConfigKey::Client(
                object_store::ClientConfigKey::AllowHttp
            )),
            None
        );
        assert!(s.describe().contains("profile dr in /home/u/.aws/config"));
    }

    #[test]
    fn an_endpoint_is_described_without_its_userinfo_and_profile_default_is_read() {
        let s = settings(
            &[("AWS_ENDPOINT_URL", "https://user:pw@s3.example:9000")],
            &[(
                "/home/u/.aws/config",
                "[profile default]\nregion = ap-south-1\n",
            )],
        );
        let d = s.describe();
        assert!(d.contains("endpoint=https://s3.example:9000/"), "{d}");
        assert!(!d.contains("pw"), "{d}");
        assert_eq!(s.get(AmazonS3ConfigKey::Region), Some("ap-south-1"));
    }

    #[test]
    fn no_settings_say_so_and_retries_can_be_lowered() {
        let s = settings(&[("TIDEMARK_S3_MAX_RETRIES", "2")], &[]);
        assert_eq!(s.retry.max_retries, 2);
        assert!(
            s.describe().starts_with("no AWS settings found"),
            "{}",
            s.describe()
        );
    }

    #[test]
    fn s3_urls_name_the_bucket_and_prefix_and_other_schemes_are_refused() {
        let s = settings(&[("AWS_REGION", "us-east-1")], &[]);
        let t = TableStore::s3(&Url::parse("s3://bucket/a/b/").unwrap(), &s).unwrap();
        assert_eq!(t.root().as_ref(), "a/b");
        assert_eq!(t.url().as_str(), "s3://bucket/a/b");
        assert!(t.is_remote());
        let err = TableStore::s3(&Url::parse("s3:///x").unwrap(), &s).unwrap_err();
        assert!(err.to_string().contains("no bucket"), "{err}");
        let err = TableStore::parse("gs://b/t", tidemark_fs::std_fs()).unwrap_err();
        assert!(err.to_string().contains("gs://"), "{err}");
    }

    #[test]
    fn local_paths_and_file_urls_name_the_same_table() {
        let dir = tempfile::tempdir().unwrap();
        let a = TableStore::parse(dir.path().to_str().unwrap(), tidemark_fs::std_fs()).unwrap();
        let url = Url::from_directory_path(dir.path()).unwrap().to_string();
        let b = TableStore::parse(&url, tidemark_fs::std_fs()).unwrap();
        assert_eq!(a.root(), b.root());
        assert_eq!(a.url(), b.url());
        assert!(!a.is_remote());
    }

    /// An in-memory store whose conditional writes land but answer with `answer` (a lost
    /// response that the client's retry turned into "already exists", or an error).
    #[derive(Debug)]
    struct LostAnswer {
        inner: object_store::memory::InMemory,
        answer: fn(&Path) -> object_store::Error,
    }

    impl fmt::Display for LostAnswer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("LostAnswer")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for LostAnswer {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.inner.put_opts(location, payload, opts).await?;
            Err((self.answer)(location))
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    fn already_exists(p: &Path) -> object_store::Error {
        object_store::Error::AlreadyExists {
            path: p.to_string(),
            source: "retried after a lost answer".into(),
        }
    }

    fn connection_reset(p: &Path) -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source: format!("connection reset writing {p}").into(),
        }
    }

    #[tokio::test]
    async fn a_conditional_write_whose_retry_found_it_counts_as_written() {
        let store = LostAnswer {
            inner: object_store::memory::InMemory::new(),
            answer: already_exists,
        };
        let path = Path::from("t/_delta_log/00000000000000000001.json");
        let ours = bytes::Bytes::from_static(b"ours");
        let put = put_settled(&store, &path, ours.clone(), PutMode::Create).await;
        assert_eq!(put.unwrap(), ConditionalPut::Written);
        // Another writer's bytes are there now: a second create is refused.
        let theirs = bytes::Bytes::from_static(b"theirs");
        let put = put_settled(&store, &path, theirs, PutMode::Create).await;
        assert_eq!(put.unwrap(), ConditionalPut::Refused);
        // Any other error is not settled here (a local store's failed directory fsync must stay
        // a failure): returned as it came.
        let store = LostAnswer {
            inner: object_store::memory::InMemory::new(),
            answer: connection_reset,
        };
        let err = put_settled(&store, &path, ours, PutMode::Create)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
        // A plain in-memory store: written, then refused.
        let store = object_store::memory::InMemory::new();
        let path = Path::from("x");
        let a = bytes::Bytes::from_static(b"a");
        assert_eq!(
            put_settled(&store, &path, a.clone(), PutMode::Create)
                .await
                .unwrap(),
            ConditionalPut::Written
        );
        assert_eq!(
            put_settled(
                &store,
                &path,
                bytes::Bytes::from_static(b"b"),
                PutMode::Create
            )
            .await
            .unwrap(),
            ConditionalPut::Refused
        );
    }

    #[test]
    fn ini_sections_are_found_whole() {
        let text = "[a]\nx = 1\n\n[b]\n# c\nx=2\ny = 3 \n[c]\nx=4\n";
        let b = ini_section(text, "b").unwrap();
        assert_eq!(b.get("x").map(String::as_str), Some("2"));
        assert_eq!(b.get("y").map(String::as_str), Some("3"));
        assert!(ini_section(text, "d").is_none());
    }
}
