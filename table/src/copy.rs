//! One file copied from a source store to a destination store, verified: the bytes are read in
//! ranged chunks (never the whole file at once on the read side), their SHA-256 and size
//! computed while reading, written durably, then the written object is checked against them.
//!
//! Durability and atomicity are the destination store's: a [`DurableLocalStore`] writes every
//! `put` (and a multipart upload at `complete`) to a temporary name, fsyncs it, renames (or,
//! for [`WriteMode::CreateNew`], links) it under the final name and fsyncs the directory, so a
//! crash or an I/O error never leaves part of a file under its final name; an object store
//! such as S3 makes a `put` or a completed multipart upload visible whole.
//!
//! Invariants kept here:
//! - [`copy_verified`] returns `Ok` only when the object under the destination name has the
//!   source's size and (with [`Verify::SizeAndChecksum`], the default) its CRC-32, as read
//!   back from the destination and compared with the CRC-32 of the bytes read from the source
//!   (CRC-32 is hardware-accelerated: the read-back costs a read, not a second SHA-256). The
//!   source's SHA-256 is computed in the same read unless the caller does not need it
//!   ([`CopyOptions::sha256`]; replication does not).
//! - A source that does not match the size the caller expects (the log's `add.size`), or that
//!   changes while being read, is an error naming the file; nothing is written under the final
//!   name in that case.
//! - [`WriteMode::CreateNew`] never replaces an existing object: an identical one counts as
//!   already copied, a different one is an error naming the file.
//!
//! [`DurableLocalStore`]: tidemark_connectors::durable_store::DurableLocalStore

use std::fmt;
use std::str::FromStr;
use tidemark_connectors::multipart::AbortOnDrop;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 checksum, shown and serialized as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Sum(pub [u8; 32]);

impl fmt::Display for Sha256Sum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256Sum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Sum({self})")
    }
}

impl FromStr for Sha256Sum {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{s:?} is not 64 hex digits (a SHA-256)"));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Self(out))
    }
}

impl Serialize for Sha256Sum {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Sum {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A file's size and SHA-256: what a copy is verified against and what a backup manifest
/// stores for each file (`{"size": 123, "sha256": "ab..."}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileDigest {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: Sha256Sum,
}

impl FileDigest {
    /// The digest of bytes in memory.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::of_parts(&[bytes])
    }

    /// The digest of the concatenation of `parts`.
    pub fn of_parts(parts: &[impl AsRef<[u8]>]) -> Self {
        let mut sha = Sha256::new();
        let mut size = 0u64;
        for part in parts {
            sha.update(part.as_ref());
            size += part.as_ref().len() as u64;
        }
        Self {
            size,
            sha256: Sha256Sum(sha.finalize().into()),
        }
    }
}

impl fmt::Display for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes, sha256 {}", self.size, self.sha256)
    }
}

/// A copy that failed or could not be verified; each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading the source (or reading back the destination) failed.
    #[error("read {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Writing the destination failed (nothing is left under its final name).
    #[error("write {file}: {source}")]
    Write {
        /// The file.
        file: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// The source file's size is not what the table's log says it is.
    #[error("{file} has {actual} bytes but the log says {expected}: the source file is damaged or not the one the log refers to")]
    SourceSize {
        /// The file.
        file: String,
        /// What the caller (the log) expects.
        expected: u64,
        /// What the source holds.
        actual: u64,
    },
    /// The source changed while it was being copied.
    #[error("{file} changed while being copied: {detail}")]
    SourceChanged {
        /// The file.
        file: String,
        /// What changed.
        detail: String,
    },
    /// The written object does not match what was read (removed again when this copy wrote it).
    #[error(
        "{file} was written but does not match its source: source {expected}, written {found}"
    )]
    Mismatch {
        /// The destination file.
        file: String,
        /// The source's size and CRC-32.
        expected: ReadSums,
        /// What the destination holds (its CRC-32 not read when its size differs).
        found: ReadSums,
    },
    /// [`WriteMode::CreateNew`] found a different object under the destination name.
    #[error("{file} already exists with different content ({existing}; the source is {source_digest}): refusing to replace it")]
    ExistsDifferent {
        /// The destination file.
        file: String,
        /// What the destination holds.
        existing: FileDigest,
        /// What the source holds.
        source_digest: FileDigest,
    },
}

/// How the destination name may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Replace whatever is there (data files: unique names, never referenced before their
    /// commit is copied).
    Overwrite,
    /// Only if absent (`PutMode::Create`): commit files, so an existing commit is never
    /// replaced. An identical existing object counts as copied.
    CreateNew,
}

/// How a written object is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Size from the store's metadata and the CRC-32 of the object read back.
    SizeAndChecksum,
    /// Size only (cheaper; the bytes are trusted to the store).
    Size,
}

/// Options of [`copy_verified`].
#[derive(Clone, Copy)]
pub struct CopyOptions<'a> {
    /// How the destination name may be written.
    pub mode: WriteMode,
    /// How the written object is checked.
    pub verify: Verify,
    /// The size the source must have (the log's `add.size`), if known.
    pub expected_size: Option<u64>,
    /// When the destination already holds an object of the source's size, compare checksums
    /// and skip the write if they match (resuming an interrupted copy).
    pub skip_identical: bool,
    /// Bytes per read; a multipart part gathers reads up to at least [`MIN_PART_BYTES`].
    pub chunk_bytes: usize,
    /// Compute the source's SHA-256 while reading it (the outcome's [`FileDigest`]; backup
    /// manifests need it). Without it the outcome carries the size and CRC-32 only.
    pub sha256: bool,
    /// Called with the number of source bytes read, as they are read (progress bars).
    pub progress: Option<&'a (dyn Fn(u64) + Send + Sync)>,
}

impl fmt::Debug for CopyOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CopyOptions")
            .field("mode", &self.mode)
            .field("verify", &self.verify)
            .field("expected_size", &self.expected_size)
            .field("skip_identical", &self.skip_identical)
            .field("chunk_bytes", &self.chunk_bytes)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// The default read size: 8 MiB.
pub const DEFAULT_CHUNK_BYTES: usize = 8 << 20;

impl Default for CopyOptions<'_> {
    fn default() -> Self {
        Self {
            mode: WriteMode::Overwrite,
            verify: Verify::SizeAndChecksum,
            expected_size: None,
            skip_identical: true,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            sha256: true,
            progress: None,
        }
    }
}

/// A file's size and CRC-32 as read: what a written object is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadSums {
    /// Size in bytes.
    pub size: u64,
    /// CRC-32 (IEEE) of the whole file; `None` when not read (the sizes already differ).
    pub crc32: Option<u32>,
}

impl fmt::Display for ReadSums {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.crc32 {
            Some(crc) => write!(f, "{} bytes, crc32 {crc:08x}", self.size),
            None => write!(f, "{} bytes", self.size),
        }
    }
}

/// What a copy knows of the file it copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Size and CRC-32.
    pub sums: ReadSums,
    /// SHA-256, when it was computed ([`CopyOptions::sha256`], or a comparison with an
    /// existing file).
    pub sha256: Option<Sha256Sum>,
}

impl Copied {
    /// The size and SHA-256, when the SHA-256 was computed.
    pub fn file_digest(&self) -> Option<FileDigest> {
        self.sha256.map(|sha256| FileDigest {
            size: self.sums.size,
            sha256,
        })
    }
}

/// What [`copy_verified`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyOutcome {
    /// The file was written and verified.
    Copied(Copied),
    /// An identical file was already there (compared by SHA-256); nothing was written.
    AlreadyPresent(FileDigest),
}

impl CopyOutcome {
    /// The file's size and SHA-256, when the SHA-256 was computed (always for
    /// [`CopyOutcome::AlreadyPresent`], and with [`CopyOptions::sha256`]).
    pub fn digest(&self) -> Option<FileDigest> {
        match self {
            Self::Copied(c) => c.file_digest(),
            Self::AlreadyPresent(d) => Some(*d),
        }
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        match self {
            Self::Copied(c) => c.sums.size,
            Self::AlreadyPresent(d) => d.size,
        }
    }

    /// Bytes written to the destination (0 when already present).
    pub fn bytes_written(&self) -> u64 {
        match self {
            Self::Copied(c) => c.sums.size,
            Self::AlreadyPresent(_) => 0,
        }
    }
}

fn read_err(path: &Path) -> impl FnOnce(object_store::Error) -> CopyError + '_ {
    move |source| CopyError::Read {
        file: path.to_string(),
        source,
    }
}

fn write_err(path: &Path) -> impl FnOnce(object_store::Error) -> CopyError + '_ {
    move |source| CopyError::Write {
        file: path.to_string(),
        source,
    }
}

/// The object's metadata, `None` when it does not exist.
pub async fn head_if_exists(
    store: &dyn ObjectStore,
    path: &Path,
) -> Result<Option<ObjectMeta>, CopyError> {
    match store.head(path).await {
        Ok(meta) => Ok(Some(meta)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(read_err(path)(e)),
    }
}

/// Reads `path` in `chunk_bytes` ranges of its `size` bytes, feeding each to `each` in order.
/// A range that comes back short is reported as the file having changed.
async fn read_chunks(
    store: &dyn ObjectStore,
    path: &Path,
    size: u64,
    chunk_bytes: usize,
    mut each: impl FnMut(Bytes) -> Result<(), CopyError>,
) -> Result<(), CopyError> {
    let chunk = chunk_bytes.max(1) as u64;
    let mut offset = 0u64;
    while offset < size {
        let end = (offset + chunk).min(size);
        let bytes = read_range(store, path, size, offset, end).await?;
        offset = end;
        each(bytes)?;
    }
    Ok(())
}

/// Bytes `offset..end` of `path`, a file of `size` bytes; a range that fails because the file
/// shrank or went away, or that comes back short, is reported as the file having changed.
async fn read_range(
    store: &dyn ObjectStore,
    path: &Path,
    size: u64,
    offset: u64,
    end: u64,
) -> Result<Bytes, CopyError> {
    let bytes = match store.get_range(path, offset..end).await {
        Ok(bytes) => bytes,
        // A range past the end: the file shrank under us.
        Err(e) => {
            return match head_if_exists(store, path).await? {
                Some(meta) if meta.size != size => Err(CopyError::SourceChanged {
                    file: path.to_string(),
                    detail: format!("it had {size} bytes, now {}", meta.size),
                }),
                None => Err(CopyError::SourceChanged {
                    file: path.to_string(),
                    detail: "it was deleted".into(),
                }),
                Some(_) => Err(read_err(path)(e)),
            }
        }
    };
    if bytes.len() as u64 != end - offset {
        return Err(CopyError::SourceChanged {
            file: path.to_string(),
            detail: format!(
                "a read of bytes {offset}..{end} returned {} bytes",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

/// Parts of one multipart upload sent at once (each `chunk_bytes`, 8 MiB by default, and at
/// least [`MIN_PART_BYTES`]).
const PARTS_IN_FLIGHT: usize = 4;

/// The smallest part S3 accepts in a multipart upload (all parts but the last).
pub const MIN_PART_BYTES: usize = 5 << 20;

/// The size and SHA-256 of `path`, read in chunks of `chunk_bytes`.
pub async fn digest_of(
    store: &dyn ObjectStore,
    path: &Path,
    chunk_bytes: usize,
) -> Result<FileDigest, CopyError> {
    let meta = store.head(path).await.map_err(read_err(path))?;
    let mut hasher = Sha256::new();
    read_chunks(store, path, meta.size, chunk_bytes, |bytes| {
        hasher.update(&bytes);
        Ok(())
    })
    .await?;
    Ok(FileDigest {
        size: meta.size,
        sha256: Sha256Sum(hasher.finalize().into()),
    })
}

/// Copies `from` in `src` to `to` in `dst` and verifies it; see the module documentation.
pub async fn copy_verified(
    src: &dyn ObjectStore,
    from: &Path,
    dst: &dyn ObjectStore,
    to: &Path,
    options: &CopyOptions<'_>,
) -> Result<CopyOutcome, CopyError> {
    let source_meta = src.head(from).await.map_err(read_err(from))?;
    let size = source_meta.size;
    if let Some(expected) = options.expected_size {
        if expected != size {
            return Err(CopyError::SourceSize {
                file: from.to_string(),
                expected,
                actual: size,
            });
        }
    }
    let check_existing = options.skip_identical || options.mode == WriteMode::CreateNew;
    if check_existing {
        if let Some(existing) = head_if_exists(dst, to).await? {
            if let Some(outcome) =
                compare_existing(src, from, dst, to, &existing, size, options).await?
            {
                return Ok(outcome);
            }
        }
    }

    let mut sums = Summer::new(options.sha256);
    let copied;
    // Small files (and anything put-if-absent) in one put; big ones as a multipart upload,
    // one part per chunk (a local durable store streams the parts to a temporary file).
    if size <= options.chunk_bytes as u64 || options.mode == WriteMode::CreateNew {
        let mut parts = Vec::new();
        read_chunks(src, from, size, options.chunk_bytes, |bytes| {
            sums.update(&bytes);
            report(options, bytes.len());
            parts.push(bytes);
            Ok(())
        })
        .await?;
        copied = sums.finish(size);
        ensure_unchanged(src, from, &source_meta).await?;
        // Put-if-absent compares an object found under the name by SHA-256.
        let digest = match (options.mode, copied.file_digest()) {
            (WriteMode::Overwrite, _) => None,
            (WriteMode::CreateNew, Some(d)) => Some(d),
            (WriteMode::CreateNew, None) => Some(FileDigest::of_parts(&parts)),
        };
        let payload = PutPayload::from_iter(parts);
        let put = put_whole(dst, to, payload, options.mode, digest, options.chunk_bytes).await?;
        if let PutOutcome::AlreadyPresent(digest) = put {
            return Ok(CopyOutcome::AlreadyPresent(digest));
        }
    } else {
        let upload = dst.put_multipart(to).await.map_err(write_err(to))?;
        let mut upload = AbortOnDrop::new(upload, to);
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut offset = 0u64;
        let chunk = options.chunk_bytes.max(1) as u64;
        let mut sent = Ok(());
        let (mut part, mut part_bytes) = (Vec::new(), 0usize);
        while offset < size && sent.is_ok() {
            let end = (offset + chunk).min(size);
            let bytes = match read_range(src, from, size, offset, end).await {
                Ok(b) => b,
                Err(e) => {
                    sent = Err(e);
                    break;
                }
            };
            offset = end;
            sums.update(&bytes);
            report(options, bytes.len());
            part_bytes += bytes.len();
            part.push(bytes);
            // S3 refuses parts under 5 MiB (but the last): reads are gathered into parts.
            if part_bytes < MIN_PART_BYTES && offset < size {
                continue;
            }
            part_bytes = 0;
            in_flight.push(upload.put_part(PutPayload::from_iter(std::mem::take(&mut part))));
            // At most PARTS_IN_FLIGHT parts buffered: a big file never sits in memory whole.
            while in_flight.len() >= PARTS_IN_FLIGHT && sent.is_ok() {
                if let Some(Err(e)) = in_flight.next().await {
                    sent = Err(write_err(to)(e));
                }
            }
        }
        while sent.is_ok() {
            match in_flight.next().await {
                None => break,
                Some(Ok(())) => {}
                Some(Err(e)) => sent = Err(write_err(to)(e)),
            }
        }
        drop(in_flight);
        let sent = match sent {
            Ok(()) => ensure_unchanged(src, from, &source_meta).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            upload.abort().await;
            return Err(e);
        }
        copied = sums.finish(size);
        upload.complete().await.map_err(write_err(to))?;
    }

    verify_written(dst, to, &copied.sums, options.verify, options.chunk_bytes).await?;
    Ok(CopyOutcome::Copied(copied))
}

/// The sums of bytes as they are read: size, CRC-32, and SHA-256 when asked for.
struct Summer {
    crc: crc32fast::Hasher,
    sha: Option<Sha256>,
}

impl Summer {
    fn new(sha256: bool) -> Self {
        Self {
            crc: crc32fast::Hasher::new(),
            sha: sha256.then(Sha256::new),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
        if let Some(sha) = self.sha.as_mut() {
            sha.update(bytes);
        }
    }

    fn finish(self, size: u64) -> Copied {
        Copied {
            sums: ReadSums {
                size,
                crc32: Some(self.crc.finalize()),
            },
            sha256: self.sha.map(|sha| Sha256Sum(sha.finalize().into())),
        }
    }
}

/// The size and CRC-32 of `path`, read in chunks of `chunk_bytes`.
async fn crc32_of(
    store: &dyn ObjectStore,
    path: &Path,
    size: u64,
    chunk_bytes: usize,
) -> Result<u32, CopyError> {
    let mut crc = crc32fast::Hasher::new();
    read_chunks(store, path, size, chunk_bytes, |bytes| {
        crc.update(&bytes);
        Ok(())
    })
    .await?;
    Ok(crc.finalize())
}

/// Writes `bytes` (already read and checked by the caller, e.g. a commit it parsed) to `to`
/// in `dst` and verifies the written object like [`copy_verified`]. With
/// [`WriteMode::CreateNew`], an identical existing object counts as written
/// ([`CopyOutcome::AlreadyPresent`]) and a different one is [`CopyError::ExistsDifferent`].
pub async fn write_verified(
    dst: &dyn ObjectStore,
    to: &Path,
    bytes: Bytes,
    mode: WriteMode,
    verify: Verify,
) -> Result<CopyOutcome, CopyError> {
    let digest = FileDigest::of_bytes(&bytes);
    let copied = Copied {
        sums: ReadSums {
            size: digest.size,
            crc32: Some(crc32fast::hash(&bytes)),
        },
        sha256: Some(digest.sha256),
    };
    let payload = PutPayload::from(bytes);
    let put = put_whole(dst, to, payload, mode, Some(digest), DEFAULT_CHUNK_BYTES).await?;
    if let PutOutcome::AlreadyPresent(digest) = put {
        return Ok(CopyOutcome::AlreadyPresent(digest));
    }
    verify_written(dst, to, &copied.sums, verify, DEFAULT_CHUNK_BYTES).await?;
    Ok(CopyOutcome::Copied(copied))
}

fn report(options: &CopyOptions<'_>, n: usize) {
    if let Some(progress) = options.progress {
        progress(n as u64);
    }
}

/// After reading: the source still has the size and version it had when the copy started.
async fn ensure_unchanged(
    src: &dyn ObjectStore,
    from: &Path,
    before: &ObjectMeta,
) -> Result<(), CopyError> {
    let Some(after) = head_if_exists(src, from).await? else {
        return Err(CopyError::SourceChanged {
            file: from.to_string(),
            detail: "it was deleted".into(),
        });
    };
    if after.size != before.size {
        return Err(CopyError::SourceChanged {
            file: from.to_string(),
            detail: format!("it had {} bytes, now {}", before.size, after.size),
        });
    }
    if after.e_tag != before.e_tag || after.last_modified != before.last_modified {
        return Err(CopyError::SourceChanged {
            file: from.to_string(),
            detail: "it was modified (same size, new version)".into(),
        });
    }
    Ok(())
}

/// The destination already has `to`: decides whether it is the source's copy.
async fn compare_existing(
    src: &dyn ObjectStore,
    from: &Path,
    dst: &dyn ObjectStore,
    to: &Path,
    existing: &ObjectMeta,
    size: u64,
    options: &CopyOptions<'_>,
) -> Result<Option<CopyOutcome>, CopyError> {
    let same_size = existing.size == size;
    if same_size {
        let source = digest_of(src, from, options.chunk_bytes).await?;
        let there = digest_of(dst, to, options.chunk_bytes).await?;
        if source == there {
            report(options, size as usize);
            return Ok(Some(CopyOutcome::AlreadyPresent(source)));
        }
        if options.mode == WriteMode::CreateNew {
            return Err(CopyError::ExistsDifferent {
                file: to.to_string(),
                existing: there,
                source_digest: source,
            });
        }
    } else if options.mode == WriteMode::CreateNew {
        let source = digest_of(src, from, options.chunk_bytes).await?;
        let there = digest_of(dst, to, options.chunk_bytes).await?;
        return Err(CopyError::ExistsDifferent {
            file: to.to_string(),
            existing: there,
            source_digest: source,
        });
    }
    tracing::warn!(
        file = %to,
        existing_bytes = existing.size,
        source_bytes = size,
        "the destination holds a different file under this name; replacing it"
    );
    Ok(None)
}

/// Puts `payload` at `to` in one request. With [`WriteMode::CreateNew`], an object found
/// under the name counts as written when its digest (read in chunks of `chunk_bytes`) is
/// `digest`, the payload's ([`PutOutcome::AlreadyPresent`]), and is
/// [`CopyError::ExistsDifferent`] otherwise. [`PutOutcome::Written`] means this put wrote the
/// object (not yet verified).
async fn put_whole(
    dst: &dyn ObjectStore,
    to: &Path,
    payload: PutPayload,
    mode: WriteMode,
    digest: Option<FileDigest>,
    chunk_bytes: usize,
) -> Result<PutOutcome, CopyError> {
    let mode = match mode {
        WriteMode::Overwrite => PutMode::Overwrite,
        WriteMode::CreateNew => PutMode::Create,
    };
    let put = dst
        .put_opts(
            to,
            payload,
            PutOptions {
                mode,
                ..PutOptions::default()
            },
        )
        .await;
    match put {
        Ok(_) => Ok(PutOutcome::Written),
        Err(object_store::Error::AlreadyExists { source, .. }) => {
            let Some(digest) = digest else {
                return Err(write_err(to)(object_store::Error::AlreadyExists {
                    path: to.to_string(),
                    source,
                }));
            };
            let existing = digest_of(dst, to, chunk_bytes).await?;
            if existing == digest {
                Ok(PutOutcome::AlreadyPresent(digest))
            } else {
                Err(CopyError::ExistsDifferent {
                    file: to.to_string(),
                    existing,
                    source_digest: digest,
                })
            }
        }
        Err(e) => Err(write_err(to)(e)),
    }
}

/// What a single put did.
enum PutOutcome {
    /// This put wrote the object.
    Written,
    /// Put-if-absent found an identical object (this digest).
    AlreadyPresent(FileDigest),
}

/// Checks the written object against `expected` (its size; with [`Verify::SizeAndChecksum`]
/// its CRC-32 read back); a mismatching object this copy wrote is removed (best effort) so
/// that no wrong file stays under the final name.
async fn verify_written(
    dst: &dyn ObjectStore,
    to: &Path,
    expected: &ReadSums,
    verify: Verify,
    chunk_bytes: usize,
) -> Result<(), CopyError> {
    let meta = dst.head(to).await.map_err(read_err(to))?;
    let found = if meta.size != expected.size {
        Some(ReadSums {
            size: meta.size,
            crc32: None,
        })
    } else if verify == Verify::SizeAndChecksum {
        let crc32 = crc32_of(dst, to, meta.size, chunk_bytes).await?;
        (Some(crc32) != expected.crc32).then_some(ReadSums {
            size: meta.size,
            crc32: Some(crc32),
        })
    } else {
        None
    };
    match found {
        None => Ok(()),
        Some(found) => {
            if let Err(e) = dst.delete(to).await {
                tracing::error!(file = %to, error = %e, "could not remove a copy that failed verification");
            }
            Err(CopyError::Mismatch {
                file: to.to_string(),
                expected: *expected,
                found,
            })
        }
    }
}

/// Runs `work` (copies, usually) `parallel` at a time. After the first error no further item
/// starts, and those already running are awaited before that error is returned: when this
/// returns, no write it started is still going on, so each file is whole under its final name
/// or absent, and no temporary file of its is left behind.
pub async fn run_until_first_error<T, E, F>(
    work: impl IntoIterator<Item = F>,
    parallel: usize,
) -> Result<Vec<T>, E>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    use futures::StreamExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    let failed = AtomicBool::new(false);
    let failed = &failed;
    let mut running = futures::stream::iter(work)
        .map(|item| async move {
            if failed.load(Ordering::Relaxed) {
                return None;
            }
            let result = item.await;
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            Some(result)
        })
        .buffer_unordered(parallel.max(1));
    let mut done = Vec::new();
    let mut first_error = None;
    while let Some(result) = running.next().await {
        match result {
            Some(Ok(t)) => done.push(t),
            Some(Err(e)) => {
                first_error.get_or_insert(e);
            }
            None => {}
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
