use std::fs;

use proptest::prelude::*;

use super::*;

fn kind() -> impl Strategy<Value = FrameKind> {
    prop_oneof![
        Just(FrameKind::Record),
        Just(FrameKind::Seal),
        Just(FrameKind::Marker)
    ]
}

/// Frames as `(kind, epoch, payload)` with non-decreasing epochs, and the batch sizes to commit.
fn frames() -> impl Strategy<Value = (Vec<(FrameKind, u64, Vec<u8>)>, usize)> {
    (
        proptest::collection::vec(
            (
                kind(),
                0u64..3,
                proptest::collection::vec(any::<u8>(), 0..150),
            ),
            1..50,
        ),
        1usize..6,
    )
        .prop_map(|(raw, batch)| {
            let mut epoch = 1;
            let frames = raw
                .into_iter()
                .map(|(k, d, p)| {
                    epoch += d;
                    (k, epoch, p)
                })
                .collect();
            (frames, batch)
        })
}

struct Written {
    /// (segment id, frame end offset) per frame.
    ends: Vec<(u64, u64)>,
    frames: Vec<(FrameKind, u64, Vec<u8>)>,
}

fn write_all(
    dir: &Path,
    segment_size: u64,
    frames: &[(FrameKind, u64, Vec<u8>)],
    batch: usize,
    sync: SyncPolicy,
) -> Written {
    let (mut wal, report) = Wal::open(dir, WalOptions { segment_size, sync }, None).unwrap();
    assert_eq!(report.frames, 0);
    let mut ends = Vec::new();
    for (i, (k, e, p)) in frames.iter().enumerate() {
        let at = wal.append(*k, *e, p).unwrap();
        ends.push((at.segment, at.offset + frame_len(p.len()) as u64));
        if (i + 1) % batch == 0 {
            wal.commit().unwrap();
        }
    }
    wal.sync().unwrap();
    Written {
        ends,
        frames: frames.to_vec(),
    }
}

fn read_all(dir: &Path) -> Vec<(FrameKind, u64, Vec<u8>)> {
    WalReader::new(dir, WalPosition::default())
        .map(|r| r.map(|(_, f)| (f.kind, f.epoch, f.payload)).unwrap())
        .collect()
}

fn segment_files(dir: &Path) -> Vec<(u64, PathBuf, u64)> {
    list_segments(&tidemark_fs::StdFs, dir)
        .unwrap()
        .into_iter()
        .map(|(id, p)| {
            let len = fs::metadata(&p).unwrap().len();
            (id, p, len)
        })
        .collect()
}

/// Maps a global byte index over all segments (in id order) to (segment id, path, offset).
fn locate(dir: &Path, global: u64) -> (u64, PathBuf, u64) {
    let mut rest = global;
    for (id, p, len) in segment_files(dir) {
        if rest < len {
            return (id, p, rest);
        }
        rest -= len;
    }
    unreachable!("index past the log")
}

fn total_len(dir: &Path) -> u64 {
    segment_files(dir).iter().map(|(_, _, l)| l).sum()
}

fn expected_prefix(w: &Written, seg: u64, offset: u64) -> Vec<(FrameKind, u64, Vec<u8>)> {
    w.frames
        .iter()
        .zip(&w.ends)
        .take_while(|(_, (s, end))| *s < seg || (*s == seg && *end <= offset))
        .map(|(f, _)| f.clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn truncation_at_any_byte_recovers_exactly_the_prefix(
        (frames, batch) in frames(),
        segment_size in 64u64..1500,
        cut in any::<proptest::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let w = write_all(dir.path(), segment_size, &frames, batch, SyncPolicy::OnSeal);
        prop_assert_eq!(read_all(dir.path()), frames.clone());
        let (seg, path, offset) = locate(dir.path(), cut.index(total_len(dir.path()) as usize) as u64);
        // The log ends at `cut`: this segment is cut there, later ones are gone.
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(offset).unwrap();
        for (id, p, _) in segment_files(dir.path()) {
            if id > seg { fs::remove_file(p).unwrap(); }
        }
        let expected = expected_prefix(&w, seg, offset);
        let (mut wal, report) = Wal::open(dir.path(), WalOptions { segment_size, sync: SyncPolicy::EveryBatch }, None).unwrap();
        prop_assert_eq!(report.frames, expected.len() as u64);
        prop_assert_eq!(read_all(dir.path()), expected.clone());
        // The log goes on after recovery.
        wal.seal(99, b"after").unwrap();
        let mut more = expected;
        more.push((FrameKind::Seal, 99, b"after".to_vec()));
        prop_assert_eq!(read_all(dir.path()), more);
    }

    /// The single-pass open ([`Wal::open_visiting`]) hands over exactly the frames, at
    /// exactly the positions, that a reader from the same position yields after the open:
    /// whatever the damage (none, a cut anywhere, a flipped bit anywhere, so torn tails and
    /// damage before the end alike) and wherever the scan starts (any frame's position).
    #[test]
    fn the_frames_an_open_visits_are_the_frames_a_reader_yields_after_it(
        (frames, batch) in frames(),
        segment_size in 64u64..1500,
        damage in 0u8..3,
        at in any::<proptest::sample::Index>(),
        bit in 0u8..8,
        start in any::<proptest::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let w = write_all(dir.path(), segment_size, &frames, batch, SyncPolicy::EveryBatch);
        // Frame starts, as the writer reported them (plus the log's start).
        let mut starts = vec![WalPosition::default()];
        starts.extend(w.ends.iter().zip(&w.frames).map(|((seg, end), (_, _, p))| WalPosition {
            segment: *seg,
            offset: end - frame_len(p.len()) as u64,
        }));
        let from = starts[start.index(starts.len())];
        let (_, path, offset) = locate(dir.path(), at.index(total_len(dir.path()) as usize) as u64);
        match damage {
            0 => {}
            1 => {
                fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(offset).unwrap();
            }
            _ => {
                let mut bytes = fs::read(&path).unwrap();
                bytes[offset as usize] ^= 1 << bit;
                fs::write(&path, bytes).unwrap();
            }
        }
        let mut visited = Vec::new();
        let (wal, report) = Wal::open_visiting(
            tidemark_fs::std_fs(),
            dir.path(),
            WalOptions { segment_size, sync: SyncPolicy::EveryBatch },
            Some(from),
            &mut |at, f: FrameRef<'_>| visited.push((at, f.kind, f.epoch, f.payload.to_vec())),
        )
        .unwrap();
        prop_assert_eq!(report.frames, visited.len() as u64);
        let read: Vec<_> = wal
            .reader(from)
            .map(|r| r.map(|(at, f)| (at, f.kind, f.epoch, f.payload)).unwrap())
            .collect();
        prop_assert_eq!(visited, read);
    }

    #[test]
    fn bit_flip_anywhere_recovers_exactly_the_frames_before_it(
        (frames, batch) in frames(),
        segment_size in 64u64..1500,
        at in any::<proptest::sample::Index>(),
        bit in 0u8..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let w = write_all(dir.path(), segment_size, &frames, batch, SyncPolicy::EveryBatch);
        let (seg, path, offset) = locate(dir.path(), at.index(total_len(dir.path()) as usize) as u64);
        let mut bytes = fs::read(&path).unwrap();
        bytes[offset as usize] ^= 1 << bit;
        fs::write(&path, bytes).unwrap();
        let expected = expected_prefix(&w, seg, offset);
        let before: Vec<(u64, Vec<u8>)> = segment_files(dir.path()).into_iter().map(|(id, p, _)| (id, fs::read(p).unwrap())).collect();
        let last = before.last().unwrap().0;
        let (_wal, report) = Wal::open(dir.path(), WalOptions { segment_size, sync: SyncPolicy::EveryBatch }, None).unwrap();
        prop_assert!(report.damage().is_some(), "a flipped bit must be reported");
        prop_assert_eq!(report.frames, expected.len() as u64);
        prop_assert_eq!(read_all(dir.path()), expected);
        if seg < last {
            // Damage before the end: nothing deleted, every segment from the damaged one on is
            // kept byte for byte in the moved-aside directory.
            let m = report.mid_log.as_ref().expect("damage before the last segment is mid-log");
            prop_assert!(report.truncation.is_none());
            prop_assert_eq!(m.at_segment, seg);
            for (id, bytes) in before.iter().filter(|(id, _)| *id >= seg) {
                let kept = m.moved_to.join(format!("{id:016x}.wal"));
                prop_assert_eq!(&fs::read(&kept).unwrap(), bytes);
            }
        }
    }
}

#[test]
fn open_from_a_checkpointed_position_scans_only_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(
        dir.path(),
        WalOptions {
            segment_size: 300,
            sync: SyncPolicy::EveryBatch,
        },
        None,
    )
    .unwrap();
    let mut mid = WalPosition::default();
    for i in 0..20u64 {
        let at = wal
            .append(FrameKind::Record, 1 + i / 5, &[i as u8; 40])
            .unwrap();
        if i == 12 {
            mid = at;
        }
        wal.commit().unwrap();
    }
    wal.seal(4, b"seal-4").unwrap();
    drop(wal);
    let (_, report) = Wal::open(dir.path(), WalOptions::default(), Some(mid)).unwrap();
    assert_eq!(report.frames, 9, "frames 12..=19 and the seal");
    assert_eq!(report.last_seal, Some((4, b"seal-4".to_vec())));
    let from_mid: Vec<_> = WalReader::new(dir.path(), mid)
        .map(|r| r.unwrap().1.payload[0])
        .collect();
    assert_eq!(from_mid[..8], [12, 13, 14, 15, 16, 17, 18, 19]);
}

#[test]
fn segments_wholly_before_an_epoch_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(
        dir.path(),
        WalOptions {
            segment_size: 200,
            sync: SyncPolicy::OnSeal,
        },
        None,
    )
    .unwrap();
    for epoch in 1..=6u64 {
        for _ in 0..4 {
            wal.append(FrameKind::Record, epoch, &[0u8; 30]).unwrap();
        }
        wal.seal(epoch, b"").unwrap();
    }
    let before = wal.segments();
    assert!(before.len() > 4);
    let removed = wal.truncate_before(4).unwrap();
    assert!(removed > 0);
    let left: Vec<_> = read_all(dir.path()).into_iter().map(|f| f.1).collect();
    assert!(left.contains(&4) && !left.is_empty());
    assert!(
        left.iter().all(|e| *e >= 3),
        "only a segment shared with epoch 4 may keep epoch 3: {left:?}"
    );
    assert_eq!(*left.last().unwrap(), 6);
}

#[test]
fn a_newer_format_version_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default(), None).unwrap();
    wal.seal(1, b"x").unwrap();
    drop(wal);
    let path = segment_path(dir.path(), 0);
    let mut bytes = fs::read(&path).unwrap();
    bytes[8..10].copy_from_slice(&9u16.to_le_bytes());
    let crc = crc32fast::hash(&bytes[0..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let err = Wal::open(dir.path(), WalOptions::default(), None).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("format version 9") && msg.contains("0000000000000000.wal"),
        "{msg}"
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        bytes,
        "a newer segment must not be modified"
    );
}
