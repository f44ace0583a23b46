use super::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;

/// One valid manifest (the same every run).
fn sample() -> Manifest {
    manifest_strategy()
        .new_tree(&mut proptest::test_runner::TestRunner::deterministic())
        .unwrap()
        .current()
}

fn digest(seed: u8) -> Sha256Sum {
    sha256_of(&[seed])
}

/// A valid manifest: full when `parent` is `None`, else an incremental of `n` versions.
fn manifest_strategy() -> impl Strategy<Value = Manifest> {
    (
        any::<bool>(),
        0u64..1_000_000,
        1u64..8,
        proptest::collection::vec(("[a-z0-9=/]{1,12}", 0u64..1 << 40, any::<u8>()), 0..12),
        "[ -~]{0,30}",
        any::<u32>(),
    )
        .prop_map(|(full, first, n, data, source, created)| {
            let last = if full { first } else { first + n - 1 };
            let mut files = Vec::new();
            let mut seen = BTreeSet::new();
            for (path, size, seed) in data {
                let path = format!("d/{}.parquet", path.replace("//", "/x/"));
                let path = path.trim_end_matches('/').replace("//", "/x/");
                if seen.insert(path.clone()) {
                    files.push(FileEntry {
                        path,
                        size,
                        sha256: digest(seed),
                        role: FileRole::Data,
                    });
                }
            }
            let data_paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
            let mut commits = Vec::new();
            for (i, v) in (first..=last).enumerate() {
                files.push(FileEntry {
                    path: format!("_delta_log/{v:020}.json"),
                    size: 100 + v,
                    sha256: digest(v as u8),
                    role: FileRole::Commit { version: v },
                });
                let adds = if full {
                    vec![]
                } else {
                    data_paths
                        .iter()
                        .skip(i)
                        .step_by(n as usize)
                        .cloned()
                        .collect()
                };
                let removes = if full {
                    vec![]
                } else {
                    vec![format!("old/{v}.parquet")]
                };
                commits.push(CommitEntry {
                    version: v,
                    timestamp_ms: 1_700_000_000_000 + v as i64,
                    adds,
                    removes,
                });
            }
            Manifest {
                id: BackupId::new(created as u64, full, first, last),
                parent: (!full).then(|| BackupId::new(created as u64 - 1, true, 0, 0)),
                table_id: "table-id".into(),
                source: source.to_string(),
                created_ms: created as u64,
                first_version: first,
                last_version: last,
                commits,
                files,
            }
        })
}

proptest! {
    #[test]
    fn round_trip(m in manifest_strategy()) {
        let bytes = m.encode().unwrap();
        prop_assert_eq!(Manifest::decode(&bytes).unwrap(), m);
    }

    /// Any one byte changed, anywhere (header or body), is refused: never read as another
    /// manifest.
    #[test]
    fn any_changed_byte_is_refused(m in manifest_strategy(), at in any::<prop::sample::Index>(), to in any::<u8>()) {
        let mut bytes = m.encode().unwrap();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != to);
        bytes[i] = to;
        prop_assert!(Manifest::decode(&bytes).is_err());
    }

    /// A manifest cut short (a torn write) or with bytes appended is refused.
    #[test]
    fn truncated_or_extended_is_refused(m in manifest_strategy(), at in any::<prop::sample::Index>(), extra in proptest::collection::vec(any::<u8>(), 1..8)) {
        let bytes = m.encode().unwrap();
        let cut = at.index(bytes.len());
        prop_assert!(Manifest::decode(&bytes[..cut]).is_err());
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(Manifest::decode(&longer).is_err());
    }
}

#[test]
fn a_newer_format_version_is_refused_by_number() {
    let m = sample();
    let bytes = m.encode().unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let newer = text.replacen(" 1 ", " 2 ", 1);
    let err = Manifest::decode(newer.as_bytes()).unwrap_err();
    assert!(
        matches!(err, ManifestError::UnsupportedVersion { found: 2 }),
        "{err}"
    );
    assert!(err.to_string().contains("version 2"), "{err}");
}

#[test]
fn a_body_change_is_named_as_a_checksum_mismatch() {
    let m = sample();
    let mut bytes = m.encode().unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let err = Manifest::decode(&bytes).unwrap_err();
    assert!(
        matches!(err, ManifestError::ChecksumMismatch { .. }),
        "{err}"
    );
}

#[test]
fn inconsistent_manifests_are_refused() {
    let m = sample();
    let mut gap = m.clone();
    gap.last_version += 1;
    assert!(gap.encode().is_err(), "a version without a commit entry");
    let mut twice = m.clone();
    twice.files.push(twice.files[0].clone());
    assert!(twice.encode().is_err(), "a file listed twice");
    let mut escape = m.clone();
    escape.files[0].path = "../etc/passwd".into();
    assert!(escape.encode().is_err(), "a path leaving the backup");
    let mut full_with_parent = m;
    full_with_parent.parent = None;
    full_with_parent.last_version = full_with_parent.first_version + 1;
    assert!(full_with_parent.encode().is_err());
}

#[test]
fn write_then_read_through_the_fs_seam() {
    let dir = tempfile::tempdir().unwrap();
    let m = sample();
    assert!(Manifest::read(dir.path()).unwrap().is_none());
    m.write(&tidemark_fs::StdFs, dir.path()).unwrap();
    assert_eq!(Manifest::read(dir.path()).unwrap(), Some(m.clone()));
    // Written once: a second write of the same backup's manifest is refused (put-if-absent).
    assert!(m.write(&tidemark_fs::StdFs, dir.path()).is_err());
}

#[test]
fn a_lost_unsynced_manifest_leaves_no_manifest_not_a_torn_one() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let fs = tidemark_fs::PowerCutFs::new(&work).unwrap();
    let m = sample();
    m.write(&fs, &work).unwrap();
    let image = dir.path().join("image");
    fs.crash_image(&image).unwrap();
    assert_eq!(Manifest::read(&image).unwrap(), Some(m));
}
