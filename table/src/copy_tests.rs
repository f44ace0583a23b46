use std::path::Path as FsPath;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::{
    CopyOptions as StoreCopyOptions, GetOptions, GetResult, ListResult, MultipartUpload,
    PutMultipartOptions, PutResult,
};
use tidemark_connectors::durable_store::DurableLocalStore;
use tidemark_fs::{Fault, FaultFs, FaultKind, Op};

use super::*;

fn store() -> DurableLocalStore {
    DurableLocalStore::new(tidemark_fs::std_fs())
}

fn at(path: &FsPath) -> Path {
    Path::from_absolute_path(path).unwrap()
}

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Every file under `dir` (recursively), relative names.
fn files_under(dir: &FsPath) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn small_and_multipart_copies_are_byte_identical_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    for (len, chunk) in [
        (0usize, 1024usize),
        (1000, 4096),
        (10_000, 1024),
        (8192, 1024),
    ] {
        let src = dir.path().join(format!("src-{len}"));
        let dst = dir.path().join(format!("out/dst-{len}"));
        let bytes = content(len, 7);
        std::fs::write(&src, &bytes).unwrap();
        let read = AtomicU64::new(0);
        let progress = |n: u64| {
            read.fetch_add(n, Ordering::Relaxed);
        };
        let options = CopyOptions {
            chunk_bytes: chunk,
            expected_size: Some(len as u64),
            progress: Some(&progress),
            ..CopyOptions::default()
        };
        let outcome = copy_verified(&s, &at(&src), &s, &at(&dst), &options)
            .await
            .unwrap();
        assert_eq!(outcome.digest(), Some(FileDigest::of_bytes(&bytes)));
        match outcome {
            CopyOutcome::Copied(c) => assert_eq!(c.sums.crc32, Some(crc32fast::hash(&bytes))),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(&dst).unwrap(), bytes);
        assert_eq!(read.load(Ordering::Relaxed), len as u64);
        assert_eq!(
            digest_of(&s, &at(&dst), 333).await.unwrap(),
            outcome.digest().unwrap()
        );
        // Again: already there, nothing written.
        let again = copy_verified(&s, &at(&src), &s, &at(&dst), &options)
            .await
            .unwrap();
        assert_eq!(
            again,
            CopyOutcome::AlreadyPresent(outcome.digest().unwrap())
        );
        assert_eq!(again.bytes_written(), 0);
    }
}

#[test]
fn file_digests_serialize_as_size_and_hex() {
    let d = FileDigest::of_bytes(b"abc");
    let json = serde_json::to_string(&d).unwrap();
    assert_eq!(
        json,
        r#"{"size":3,"sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}"#
    );
    assert_eq!(serde_json::from_str::<FileDigest>(&json).unwrap(), d);
    assert!(serde_json::from_str::<FileDigest>(r#"{"size":3,"sha256":"xyz"}"#).is_err());
}

#[tokio::test]
async fn create_new_never_replaces_a_different_file_and_accepts_an_identical_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    let (src, dst) = (dir.path().join("a.json"), dir.path().join("b.json"));
    std::fs::write(&src, b"{\"commitInfo\":{}}\n").unwrap();
    std::fs::write(&dst, b"{\"commitInfo\":{\"other\":1}}\n").unwrap();
    let options = CopyOptions {
        mode: WriteMode::CreateNew,
        ..CopyOptions::default()
    };
    let err = copy_verified(&s, &at(&src), &s, &at(&dst), &options)
        .await
        .unwrap_err();
    assert!(matches!(err, CopyError::ExistsDifferent { .. }), "{err}");
    assert!(err.to_string().contains("b.json"), "{err}");
    assert_eq!(
        std::fs::read(&dst).unwrap(),
        b"{\"commitInfo\":{\"other\":1}}\n"
    );
    // Same size, different bytes: still refused.
    std::fs::write(&dst, b"{\"commitInfo\":{}}\r\n").unwrap();
    std::fs::write(&src, b"{\"commitInfo\":{}}\n\n").unwrap();
    let err = copy_verified(&s, &at(&src), &s, &at(&dst), &options)
        .await
        .unwrap_err();
    assert!(matches!(err, CopyError::ExistsDifferent { .. }), "{err}");
    std::fs::write(&dst, b"{\"commitInfo\":{}}\n\n").unwrap();
    let ok = copy_verified(&s, &at(&src), &s, &at(&dst), &options)
        .await
        .unwrap();
    assert!(matches!(ok, CopyOutcome::AlreadyPresent(_)));
}

#[tokio::test]
async fn a_source_not_of_the_logged_size_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    let (src, dst) = (
        dir.path().join("part.parquet"),
        dir.path().join("out/part.parquet"),
    );
    std::fs::write(&src, content(100, 1)).unwrap();
    let options = CopyOptions {
        expected_size: Some(101),
        ..CopyOptions::default()
    };
    let err = copy_verified(&s, &at(&src), &s, &at(&dst), &options)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CopyError::SourceSize {
                expected: 101,
                actual: 100,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("part.parquet"), "{err}");
    assert!(!dir.path().join("out").exists());
}

/// What a test store does besides forwarding everything to the local store under it.
trait Tamper: std::fmt::Debug + Send + Sync + 'static {
    /// The payload a put really stores (default: the one given).
    fn put(&self, payload: PutPayload) -> PutPayload {
        payload
    }
    /// Called after each get; `ranged`: it read bytes (not a `head`); `ok`: it succeeded.
    fn after_get(&self, _ranged: bool, _ok: bool) {}
    /// The multipart upload a put_multipart really returns (default: the store's).
    fn multipart(&self, upload: Box<dyn MultipartUpload>) -> Box<dyn MultipartUpload> {
        upload
    }
}

/// A [`DurableLocalStore`] with a [`Tamper`] on its puts and gets.
#[derive(Debug)]
struct Tampered<T>(DurableLocalStore, T);

impl<T> std::fmt::Display for Tampered<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tampered")
    }
}

#[async_trait]
impl<T: Tamper> ObjectStore for Tampered<T> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.0.put_opts(location, self.1.put(payload), opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.0.put_multipart_opts(location, opts).await?;
        Ok(self.1.multipart(upload))
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let ranged = options.range.is_some();
        let result = self.0.get_opts(location, options).await;
        self.1.after_get(ranged, result.is_ok());
        result
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: StoreCopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

/// A source that really changes the file on disk right after the first range is read from
/// it: it appends to it (`grow`) or truncates it to half.
#[derive(Debug)]
struct ChangingSource {
    file: std::path::PathBuf,
    grow: bool,
    done: AtomicBool,
}

impl Tamper for ChangingSource {
    fn after_get(&self, ranged: bool, ok: bool) {
        // Only a ranged read (the copy reading bytes, not a `head`) sets the change off.
        if ranged && !self.done.swap(true, Ordering::SeqCst) && ok {
            let len = std::fs::metadata(&self.file).unwrap().len();
            if self.grow {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&self.file)
                    .unwrap();
                f.write_all(b"more bytes").unwrap();
            } else {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.file)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }
        }
    }
}

#[tokio::test]
async fn a_source_that_changes_size_mid_copy_is_an_error_and_leaves_no_file() {
    for grow in [true, false] {
        for (len, chunk) in [(100_000usize, 8192usize), (5000, 1000), (100, 8192)] {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("part.parquet");
            let out = dir.path().join("out");
            let dst = out.join("part.parquet");
            std::fs::write(&src, content(len, 3)).unwrap();
            let changing = Tampered(
                store(),
                ChangingSource {
                    file: src.clone(),
                    grow,
                    done: AtomicBool::new(false),
                },
            );
            let options = CopyOptions {
                chunk_bytes: chunk,
                ..CopyOptions::default()
            };
            let err = copy_verified(&changing, &at(&src), &store(), &at(&dst), &options)
                .await
                .unwrap_err();
            assert!(
                matches!(err, CopyError::SourceChanged { .. }),
                "grow={grow} len={len}: {err}"
            );
            assert!(err.to_string().contains("part.parquet"), "{err}");
            assert!(
                !out.exists() || files_under(&out).is_empty(),
                "grow={grow} len={len}: {:?}",
                files_under(&out)
            );
        }
    }
}

#[tokio::test]
async fn an_eio_while_writing_leaves_nothing_under_the_final_name() {
    for (op, len, chunk) in [
        (Op::Write, 1000usize, 4096usize),
        (Op::Write, 100_000, 8192),
        (Op::Sync, 1000, 4096),
        (Op::Rename, 100_000, 8192),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("part.parquet");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let dst = out.join("part.parquet");
        std::fs::write(&src, content(len, 9)).unwrap();
        let fault = FaultFs::new(tidemark_fs::std_fs());
        fault.arm(Fault {
            partial: true,
            ..Fault::once(op, FaultKind::Eio)
        });
        let faulty = DurableLocalStore::new(Arc::new(fault.clone()));
        let options = CopyOptions {
            chunk_bytes: chunk,
            ..CopyOptions::default()
        };
        let err = copy_verified(&store(), &at(&src), &faulty, &at(&dst), &options)
            .await
            .unwrap_err();
        assert_eq!(fault.injected(), 1, "{op:?}");
        assert!(matches!(err, CopyError::Write { .. }), "{op:?}: {err}");
        assert!(err.to_string().contains("part.parquet"), "{err}");
        assert!(
            files_under(&out).is_empty(),
            "{op:?}: {:?}",
            files_under(&out)
        );
        // The disk is repaired: the same copy completes.
        fault.clear();
        let ok = copy_verified(&store(), &at(&src), &faulty, &at(&dst), &options)
            .await
            .unwrap();
        assert!(matches!(ok, CopyOutcome::Copied(_)), "{ok:?}");
        assert_eq!(ok.digest(), Some(FileDigest::of_bytes(&content(len, 9))));
        assert_eq!(files_under(&out), vec!["part.parquet".to_string()]);
    }
}

/// A destination that corrupts what it stores (flips one byte of every put): the copy must
/// notice on read-back and remove the bad object.
#[derive(Debug)]
struct FlipFirstByte;

impl Tamper for FlipFirstByte {
    fn put(&self, payload: PutPayload) -> PutPayload {
        let mut bytes: Vec<u8> = Bytes::from(payload).to_vec();
        if let Some(b) = bytes.get_mut(0) {
            *b ^= 0xff;
        }
        bytes.into()
    }
}

#[tokio::test]
async fn a_written_file_that_does_not_read_back_equal_is_an_error_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("part.parquet");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(&src, content(5000, 2)).unwrap();
    let err = copy_verified(
        &store(),
        &at(&src),
        &Tampered(store(), FlipFirstByte),
        &at(&out.join("part.parquet")),
        &CopyOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CopyError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("part.parquet"), "{err}");
    assert!(files_under(&out).is_empty(), "{:?}", files_under(&out));
    // Without the source's SHA-256 (replication), the CRC-32 read-back still catches it.
    let err = copy_verified(
        &store(),
        &at(&src),
        &Tampered(store(), FlipFirstByte),
        &at(&out.join("part.parquet")),
        &CopyOptions {
            sha256: false,
            ..CopyOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CopyError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("crc32"), "{err}");
    assert!(files_under(&out).is_empty(), "{:?}", files_under(&out));
    // With size-only verification the same corruption goes unnoticed: the checksum is what
    // catches it.
    let ok = copy_verified(
        &store(),
        &at(&src),
        &Tampered(store(), FlipFirstByte),
        &at(&out.join("part.parquet")),
        &CopyOptions {
            verify: Verify::Size,
            ..CopyOptions::default()
        },
    )
    .await;
    assert!(ok.is_ok());
}

/// Multipart uploads whose second part fails (as an S3 part upload failing after its
/// retries), counting aborts.
#[derive(Debug, Default)]
struct SecondPartFails {
    aborts: Arc<AtomicU64>,
}

#[derive(Debug)]
struct FailingUpload {
    inner: Box<dyn MultipartUpload>,
    parts: u64,
    aborts: Arc<AtomicU64>,
}

#[async_trait]
impl MultipartUpload for FailingUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        self.parts += 1;
        if self.parts == 2 {
            return Box::pin(async {
                Err(object_store::Error::Generic {
                    store: "test",
                    source: "injected: part upload failed (503 after retries)".into(),
                })
            });
        }
        self.inner.put_part(data)
    }
    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }
    async fn abort(&mut self) -> object_store::Result<()> {
        self.aborts.fetch_add(1, Ordering::SeqCst);
        self.inner.abort().await
    }
}

impl Tamper for SecondPartFails {
    fn multipart(&self, inner: Box<dyn MultipartUpload>) -> Box<dyn MultipartUpload> {
        Box::new(FailingUpload {
            inner,
            parts: 0,
            aborts: Arc::clone(&self.aborts),
        })
    }
}

#[tokio::test]
async fn a_failed_part_aborts_the_upload_and_leaves_nothing_under_the_final_name() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.parquet");
    // Three parts of at least 5 MiB but the last (reads of 1 MiB gathered).
    std::fs::write(&src, content(12 << 20, 3)).unwrap();
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    let dst = dir.path().join("out/dst.parquet");
    let tamper = SecondPartFails::default();
    let aborts = Arc::clone(&tamper.aborts);
    let failing = Tampered(store(), tamper);
    let err = copy_verified(
        &store(),
        &at(&src),
        &failing,
        &at(&dst),
        &CopyOptions {
            chunk_bytes: 1 << 20,
            ..CopyOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, CopyError::Write { .. }) && err.to_string().contains("dst.parquet"),
        "{err}"
    );
    assert_eq!(
        aborts.load(Ordering::SeqCst),
        1,
        "the upload was aborted once"
    );
    assert_eq!(files_under(&dir.path().join("out")), Vec::<String>::new());
}
