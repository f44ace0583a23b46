//! What [`super::Wal::open`] does before the log takes appends: scan, then repair.
//!
//! The scan finds the first damage (a torn or garbled frame or segment header, or a missing
//! segment between two present ones) and classifies it:
//!
//! - **Torn tail**: the damage is in the last segment and no valid frame follows it there.
//!   That is what a crash or power cut leaves (a write that did not finish), so it is cut off:
//!   the segment is truncated at the damage (removed if its header is torn), as before.
//! - **Damage before the end** (mid-log): later segments follow the damaged one, or a frame
//!   whose header and CRC check out follows the damage in the same segment. A crash does not
//!   do that: the disk or someone else damaged acknowledged data. Nothing is deleted: the
//!   damaged segment and every later one are moved into `<wal dir>/damaged-<unix ms>/` (see
//!   [`super::format`] for that directory's layout), the valid log ends before the damage, and
//!   the report says what the moved part held (epochs, seals) so the engine can decide whether
//!   the table already holds it.
//!
//! Invariant kept by `move_aside`: a crash at any point of the move leaves either the
//! damage in place (the next open finds it again) or a `REPAIR` manifest in the `damaged-*`
//! directory, from which the next open finishes the move and reports it again. A later
//! segment is never left behind a cut segment (that would splice the log over the gap).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tidemark_fs::{write_file_durably, FileSystem};
use tracing::{info, warn};

use super::error::{io_err, WalError};
use super::format::{FrameBinding, FrameKind, FrameRef, SegmentHeader, SEGMENT_HEADER_LEN};
use super::segment::{
    list_segments, list_spares, open_segment, read_file, salvage_frames, scan_segment,
    seal_follows, segment_name, segment_path, ScanEnd, SealEpochs,
};
use super::WalPosition;

/// The manifest of a move-aside in progress, in the `damaged-*` directory.
const REPAIR_FILE: &str = "REPAIR";
/// The manifest of a finished move-aside (the in-progress one, renamed when done).
const REPORT_FILE: &str = "REPORT";
/// The name prefix of a directory damaged segments are moved to (`damaged-<unix ms>`).
pub const DAMAGED_PREFIX: &str = "damaged-";

/// A torn tail cut off at open (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment cut.
    pub segment: PathBuf,
    /// Where the valid log ends in it (0: the segment was removed, its header was torn).
    pub at: u64,
    /// Bytes dropped from that segment.
    pub bytes_dropped: u64,
    /// Why the frame at `at` is not valid.
    pub reason: String,
    /// True when the segment is a reused file ([`super::MAX_SPARES`]): the bytes cut were
    /// mostly an older segment's, past the last frame written (what any stop of a writer on
    /// such a file leaves, not a sign of a torn write).
    pub reused_file: bool,
}

/// Damage before the end of the log, moved aside at open (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MidLogDamage {
    /// The directory the segments were moved to (`<wal dir>/damaged-<unix ms>`).
    pub moved_to: PathBuf,
    /// The moved segment files, inside `moved_to`. The damaged segment is among them whole
    /// (its valid part before the damage also stays in the live log).
    pub segments: Vec<PathBuf>,
    /// The damaged segment's id.
    pub at_segment: u64,
    /// Where in it the damage starts (0: its header, or the segment is missing).
    pub at_offset: u64,
    /// What is wrong there.
    pub reason: String,
    /// The smallest and largest epoch of any valid frame or segment header in the moved part
    /// (past the damage): with the table's progress, tells whether the table holds it all.
    pub epochs_seen: Option<(u64, u64)>,
    /// Epochs of the valid seal frames in the moved part, oldest first.
    pub seals_seen: Vec<u64>,
    /// True if an earlier open started this move and crashed before it finished.
    pub resumed: bool,
}

/// Which kind of damage an open found, borrowed from its [`RecoveryReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalDamage<'a> {
    /// A torn tail, cut off.
    TornTail(&'a Truncation),
    /// Damage before the end, moved aside.
    MidLog(&'a MidLogDamage),
}

/// What [`super::Wal::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments scanned.
    pub segments_scanned: usize,
    /// Valid frames scanned.
    pub frames: u64,
    /// The newest seal scanned: its epoch and payload.
    pub last_seal: Option<(u64, Vec<u8>)>,
    /// The newest epoch of any frame scanned.
    pub last_epoch: Option<u64>,
    /// The torn tail cut off, if any.
    pub truncation: Option<Truncation>,
    /// Damage before the end, moved aside, if any.
    pub mid_log: Option<MidLogDamage>,
    /// The end of the valid log.
    pub end: WalPosition,
}

impl RecoveryReport {
    /// The damage found, if any; mid-log damage first (it is the one that needs a decision).
    pub fn damage(&self) -> Option<WalDamage<'_>> {
        self.mid_log
            .as_ref()
            .map(WalDamage::MidLog)
            .or(self.truncation.as_ref().map(WalDamage::TornTail))
    }
}

/// A segment of the valid log.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub(crate) id: u64,
    pub(crate) first_epoch: u64,
    pub(crate) path: PathBuf,
    /// How its frames are bound to it (its header's version).
    pub(crate) binding: FrameBinding,
}

/// The result of recovery: the valid log's segments, the report, and the id the next new
/// segment takes.
pub(crate) struct Recovered {
    pub(crate) segments: Vec<Segment>,
    pub(crate) report: RecoveryReport,
    pub(crate) next_id: u64,
    /// Spare segment files, `(id they last were, path)`, oldest first.
    pub(crate) spares: Vec<(u64, PathBuf)>,
    /// Past the newest segment id found on disk: a segment of a lower id (one removed at open)
    /// is made as a new file, never over a spare.
    pub(crate) fresh_from: u64,
}

/// The first damage a scan found.
struct Found {
    /// Index in the listing.
    index: usize,
    at: u64,
    reason: String,
    /// A missing segment: never a torn tail.
    gap: bool,
    /// The epoch of the segment's last valid frame before the damage, if one was read.
    last_epoch: Option<u64>,
}

/// Scans the log in `dir` from `from`, finishes an interrupted move-aside, and repairs the
/// first damage found (see the module documentation).
pub(crate) fn recover(
    fs: &dyn FileSystem,
    dir: &Path,
    from: Option<WalPosition>,
    visit: &mut dyn FnMut(WalPosition, FrameRef<'_>),
) -> Result<Recovered, WalError> {
    let mut report = RecoveryReport {
        mid_log: resume_interrupted(fs, dir)?,
        ..RecoveryReport::default()
    };
    let listed = list_segments(fs, dir)?;
    let from = from.unwrap_or_default();
    let mut segments = Vec::new();
    let found = scan(fs, &listed, from, &mut segments, &mut report, visit)?;
    let mut next_id = listed.last().map(|(id, _)| id + 1).unwrap_or(0);
    if let Some(found) = found {
        let (id, path) = &listed[found.index];
        let is_last = found.index + 1 == listed.len();
        // The damaged segment's header, read once: how its frames are bound, and whether it
        // is a reused file.
        let header = if found.gap {
            None
        } else {
            open_segment(fs, path)?.1.ok()
        };
        let mid_log = found.gap
            || !is_last
            || valid_seal_follows(
                fs,
                path,
                found.at,
                &bindings_for(header, *id),
                own_epochs(header, *id, found.last_epoch),
            )?;
        if found.at == 0 {
            segments.retain(|s| s.id != *id);
        }
        // The next segment follows the live log's last one (no gap the next open would take
        // for damage); an id moved aside or removed is reused: the live directory no longer
        // holds it.
        next_id = segments.last().map(|s| s.id + 1).unwrap_or(*id);
        report.end = if found.at == 0 {
            match segments.last() {
                Some(s) => WalPosition {
                    segment: s.id,
                    offset: fs.len(&s.path).map_err(io_err("stat", &s.path))?,
                },
                None => WalPosition::default(),
            }
        } else {
            WalPosition {
                segment: *id,
                offset: found.at,
            }
        };
        if mid_log {
            let aside = new_damaged_dir(fs, dir)?;
            let damage = move_aside(fs, dir, &aside, *id, found.at, &found.reason, false)?;
            report.mid_log = Some(damage);
        } else {
            let reused_file = header.is_some_and(|h| h.recycled);
            report.truncation = Some(cut_torn_tail(
                fs,
                dir,
                path,
                found.at,
                found.reason,
                reused_file,
            )?);
        }
    }
    // A spare's older frames are bound to ids up to the one it last had: a segment written
    // over it must never take one of those (`format.rs`). Spares come from the log's front,
    // so this moves the next id only when the live log is gone.
    let spares = list_spares(fs, dir)?;
    if let Some((newest, _)) = spares.iter().max() {
        next_id = next_id.max(newest + 1);
    }
    let fresh_from = newest_id_known(fs, dir, &listed, from)?.map_or(0, |id| id + 1);
    Ok(Recovered {
        segments,
        report,
        next_id,
        spares,
        fresh_from,
    })
}

/// The newest segment id this log may have had a file for: among the segments listed, the
/// checkpointed position's (its segment may be gone: removed as torn, or moved aside) and the
/// segments in `damaged-*` directories. A segment made again under such an id gets a new file
/// (`Recovered::fresh_from`): over a spare, a scan from a position inside it would start in
/// the spare's older bytes.
fn newest_id_known(
    fs: &dyn FileSystem,
    dir: &Path,
    listed: &[(u64, PathBuf)],
    from: WalPosition,
) -> Result<Option<u64>, WalError> {
    let mut newest = listed.last().map(|(id, _)| *id);
    if from != WalPosition::default() {
        newest = newest.max(Some(from.segment));
    }
    for path in fs.read_dir(dir).map_err(io_err("list", dir))? {
        let damaged = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(DAMAGED_PREFIX));
        if damaged {
            if let Ok(moved) = list_segments(fs, &path) {
                newest = newest.max(moved.last().map(|(id, _)| *id));
            }
        }
    }
    Ok(newest)
}

/// Reads every listed segment (headers only before `from`), filling `segments` and `report`
/// with the valid log, and returns the first damage. `visit` gets each valid frame from
/// `from` on, in log order: exactly the frames a reader from `from` yields once the repair
/// is done (the scan stops at the first damage, and the repair keeps everything before it).
fn scan(
    fs: &dyn FileSystem,
    listed: &[(u64, PathBuf)],
    from: WalPosition,
    segments: &mut Vec<Segment>,
    report: &mut RecoveryReport,
    visit: &mut dyn FnMut(WalPosition, FrameRef<'_>),
) -> Result<Option<Found>, WalError> {
    for (i, (id, path)) in listed.iter().enumerate() {
        let damaged = |at: u64, reason: String| {
            Some(Found {
                index: i,
                at,
                reason,
                gap: false,
                last_epoch: None,
            })
        };
        if i > 0 && listed[i - 1].0 + 1 != *id {
            return Ok(Some(Found {
                index: i,
                at: 0,
                reason: format!(
                    "segments {} to {} are missing",
                    segment_name(listed[i - 1].0 + 1),
                    segment_name(id - 1)
                ),
                gap: true,
                last_epoch: None,
            }));
        }
        let header_ok = |h: SegmentHeader| {
            if h.segment_id == *id {
                Ok(h)
            } else {
                Err(format!(
                    "header names segment {} but file is {}",
                    h.segment_id, id
                ))
            }
        };
        if *id < from.segment {
            // Before the checkpointed position: trusted, not rescanned. Read its header only.
            match open_segment(fs, path)?.1.and_then(header_ok) {
                Ok(h) => segments.push(Segment {
                    id: *id,
                    first_epoch: h.first_epoch,
                    path: path.clone(),
                    binding: h.binding(),
                }),
                Err(why) => return Ok(damaged(0, why)),
            }
            continue;
        }
        let offset = if *id == from.segment { from.offset } else { 0 };
        report.segments_scanned += 1;
        let mut frames = 0;
        let mut last_epoch = None;
        let mut last_seal = None;
        let check_header = |h: &SegmentHeader| header_ok(*h).map(|_| ());
        let (header, end) = scan_segment(fs, path, offset, check_header, |pos, frame| {
            frames += 1;
            last_epoch = Some(frame.epoch);
            if frame.kind == FrameKind::Seal {
                last_seal = Some((frame.epoch, frame.payload.to_vec()));
            }
            let at = WalPosition {
                segment: *id,
                offset: pos,
            };
            visit(at, frame);
        })?;
        let header = match header {
            Some(h) => h,
            None => match end {
                ScanEnd::Damaged(_, why) => return Ok(damaged(0, why)),
                ScanEnd::Clean(_) => return Ok(damaged(0, "segment header is damaged".into())),
            },
        };
        report.frames += frames;
        if last_epoch.is_some() {
            report.last_epoch = last_epoch;
        }
        if last_seal.is_some() {
            report.last_seal = last_seal;
        }
        segments.push(Segment {
            id: *id,
            first_epoch: header.first_epoch,
            path: path.clone(),
            binding: header.binding(),
        });
        match end {
            ScanEnd::Clean(len) => {
                report.end = WalPosition {
                    segment: *id,
                    offset: len,
                }
            }
            ScanEnd::Damaged(at, why) => {
                return Ok(damaged(at, why).map(|f| Found { last_epoch, ..f }))
            }
        }
    }
    Ok(None)
}

/// True if a SEAL frame whose header and CRC check out starts anywhere after the damage at
/// `at` in `path` (after the header if the header itself is damaged). Reads only from there on.
///
/// Only a seal proves the damaged bytes were acknowledged (a seal is fsynced with everything
/// before it). Unsealed records after the damage may be a power cut's unordered writeback of
/// an unacknowledged tail: that is a torn tail, cut like any other.
///
/// Frames count under `bindings`, the segment's own ([`bindings_for`]): a reused file's older
/// frames are never its frames.
fn valid_seal_follows(
    fs: &dyn FileSystem,
    path: &Path,
    at: u64,
    bindings: &[FrameBinding],
    epochs: SealEpochs,
) -> Result<bool, WalError> {
    let from = if at == 0 {
        SEGMENT_HEADER_LEN as u64
    } else {
        at + 1
    };
    let len = fs.len(path).map_err(io_err("stat", path))?;
    let mut f = fs.open_read(path).map_err(io_err("open", path))?;
    seal_follows(&mut *f, from, len, bindings, epochs).map_err(io_err("read", path))
}

/// The epochs a seal of segment `id`'s own life after its damage can have, from its header
/// when the header is its own and the epoch of its last valid frame before the damage (see
/// [`SealEpochs`]); any epoch when the header is not its own.
fn own_epochs(header: Option<SegmentHeader>, id: u64, last_epoch: Option<u64>) -> SealEpochs {
    match header {
        Some(h) if h.segment_id == id => SealEpochs::Within {
            first: h.first_epoch,
            last_before: last_epoch,
        },
        _ => SealEpochs::Any,
    }
}

/// How segment `id`'s frames may be bound, given its header if readable: by the header when
/// it is its own; by this build's binding for its id when the header names another id (a
/// reused file whose new header never landed: the frames after it are that older segment's,
/// and must not pass for this one's); either way when the header is unreadable (a version 1
/// segment's frames are unbound), so damage is never taken for a torn tail for want of the
/// right binding.
fn bindings_for(header: Option<SegmentHeader>, id: u64) -> Vec<FrameBinding> {
    match header {
        Some(h) if h.segment_id == id => vec![h.binding()],
        Some(_) => vec![FrameBinding::Segment(id)],
        None => vec![FrameBinding::Segment(id), FrameBinding::Unbound],
    }
}

/// Cuts a torn tail: truncates `path` at `at`, or removes it if its header is torn.
fn cut_torn_tail(
    fs: &dyn FileSystem,
    dir: &Path,
    path: &Path,
    at: u64,
    reason: String,
    reused_file: bool,
) -> Result<Truncation, WalError> {
    let len = fs.len(path).map_err(io_err("stat", path))?;
    if at == 0 {
        fs.remove_file(path)
            .map_err(io_err("remove torn segment", path))?;
        fs.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    } else {
        let mut f = fs.open_append(path).map_err(io_err("open", path))?;
        f.set_len(at).map_err(io_err("truncate", path))?;
        f.sync_all().map_err(io_err("fsync", path))?;
    }
    if reused_file {
        info!(
            segment = %path.display(),
            at,
            bytes_dropped = len - at,
            reason = %reason,
            "wal: the last segment, a reused file, cut to its frames"
        );
    } else {
        warn!(
            segment = %path.display(),
            at,
            bytes_dropped = len - at,
            reason = %reason,
            "wal: torn tail cut off"
        );
    }
    Ok(Truncation {
        segment: path.to_path_buf(),
        at,
        bytes_dropped: len - at,
        reason,
        reused_file,
    })
}

/// A fresh `damaged-<unix ms>` directory name in `dir` (not yet created).
fn new_damaged_dir(fs: &dyn FileSystem, dir: &Path) -> Result<PathBuf, WalError> {
    let mut ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let existing = fs.read_dir(dir).map_err(io_err("list", dir))?;
    loop {
        let candidate = dir.join(format!("{DAMAGED_PREFIX}{ms}"));
        if !existing.contains(&candidate) {
            return Ok(candidate);
        }
        ms += 1;
    }
}

/// The manifest of a move-aside: where the damage is and why (one `key=value` per line).
fn manifest(at_segment: u64, at_offset: u64, reason: &str) -> String {
    let reason = reason.replace('\n', " ");
    format!("segment={at_segment}\noffset={at_offset}\nreason={reason}\n")
}

fn parse_manifest(text: &str) -> Option<(u64, u64, String)> {
    let mut segment = None;
    let mut offset = None;
    let mut reason = String::new();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("segment", v)) => segment = v.parse().ok(),
            Some(("offset", v)) => offset = v.parse().ok(),
            Some(("reason", v)) => reason = v.to_string(),
            _ => {}
        }
    }
    Some((segment?, offset?, reason))
}

/// Finishes every move-aside an earlier open started and did not finish (a `REPAIR`
/// manifest left in a `damaged-*` directory); returns the last one's report.
fn resume_interrupted(fs: &dyn FileSystem, dir: &Path) -> Result<Option<MidLogDamage>, WalError> {
    let mut entries = fs.read_dir(dir).map_err(io_err("list", dir))?;
    entries.sort();
    let mut last = None;
    for aside in entries {
        let is_damaged_dir = aside
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(DAMAGED_PREFIX));
        let manifest_path = aside.join(REPAIR_FILE);
        if !is_damaged_dir || !fs.exists(&manifest_path) {
            continue;
        }
        let text = read_file(fs, &manifest_path)?;
        let Some((at_segment, at_offset, reason)) = parse_manifest(&String::from_utf8_lossy(&text))
        else {
            return Err(WalError::Corrupt {
                path: manifest_path,
                offset: 0,
                reason: "unreadable move-aside manifest".into(),
            });
        };
        warn!(dir = %aside.display(), "wal: finishing a move-aside of damaged segments that a crash interrupted");
        last = Some(move_aside(
            fs, dir, &aside, at_segment, at_offset, &reason, true,
        )?);
    }
    Ok(last)
}

/// Moves the damaged segment `at_segment` and every later one from `dir` into `aside`, and
/// leaves the valid part of the damaged segment (bytes before `at_offset`) in `dir`.
/// Idempotent: an interrupted run is finished by running it again with the same arguments.
///
/// Order (each step durable before the next): the manifest; a hard link of the damaged
/// segment into `aside` (the original bytes, kept whole); the later segments renamed into
/// `aside`; the damaged segment replaced by its valid prefix (written whole beside it, then
/// renamed over it); the manifest renamed to `REPORT`.
fn move_aside(
    fs: &dyn FileSystem,
    dir: &Path,
    aside: &Path,
    at_segment: u64,
    at_offset: u64,
    reason: &str,
    resumed: bool,
) -> Result<MidLogDamage, WalError> {
    let sync = |d: &Path| fs.sync_dir(d).map_err(io_err("fsync directory", d));
    fs.create_dir_all(aside)
        .map_err(io_err("create directory", aside))?;
    sync(dir)?;
    let repair = aside.join(REPAIR_FILE);
    let done = aside.join(REPORT_FILE);
    if !fs.exists(&repair) && !fs.exists(&done) {
        write_file_durably(
            fs,
            &repair,
            manifest(at_segment, at_offset, reason).as_bytes(),
            false,
        )
        .map_err(io_err("write move-aside manifest", &repair))?;
    }
    let live = segment_path(dir, at_segment);
    let kept = aside.join(segment_name(at_segment));
    if at_offset > 0 && fs.exists(&live) && !fs.exists(&kept) {
        fs.hard_link(&live, &kept)
            .map_err(io_err("link damaged segment aside", &kept))?;
        sync(aside)?;
    }
    let mut moved_any = false;
    for (id, path) in list_segments(fs, dir)? {
        if id > at_segment || (id == at_segment && at_offset == 0) {
            let to = aside.join(segment_name(id));
            fs.rename(&path, &to)
                .map_err(io_err("move damaged segment aside", &path))?;
            moved_any = true;
        }
    }
    if moved_any {
        sync(aside)?;
        sync(dir)?;
    }
    if at_offset > 0
        && fs.exists(&live)
        && fs.len(&live).map_err(io_err("stat", &live))? > at_offset
    {
        let bytes = read_file(fs, &kept)?;
        let prefix = bytes
            .get(..at_offset as usize)
            .ok_or_else(|| WalError::Corrupt {
                path: kept.clone(),
                offset: at_offset,
                reason: "the moved-aside copy is shorter than the valid part".into(),
            })?;
        write_file_durably(fs, &live, prefix, false)
            .map_err(io_err("rewrite valid part of damaged segment", &live))?;
    }
    if fs.exists(&repair) {
        fs.rename(&repair, &done)
            .map_err(io_err("finish move-aside manifest", &repair))?;
        sync(aside)?;
    }
    let damage = describe_moved(fs, aside, at_segment, at_offset, reason, resumed)?;
    warn!(
        moved_to = %aside.display(),
        segments = damage.segments.len(),
        at_segment,
        at_offset,
        epochs_seen = ?damage.epochs_seen,
        seals_seen = ?damage.seals_seen,
        reason,
        "wal: DAMAGE BEFORE THE END OF THE LOG; the damaged segment and all later ones were moved aside (not deleted)"
    );
    Ok(damage)
}

/// What the moved-aside segments in `aside` hold past the damage: epochs and seals.
fn describe_moved(
    fs: &dyn FileSystem,
    aside: &Path,
    at_segment: u64,
    at_offset: u64,
    reason: &str,
    resumed: bool,
) -> Result<MidLogDamage, WalError> {
    let moved = list_segments(fs, aside)?;
    let mut epochs: Option<(u64, u64)> = None;
    let mut seen = |e: u64| {
        epochs = Some(match epochs {
            Some((lo, hi)) => (lo.min(e), hi.max(e)),
            None => (e, e),
        })
    };
    let mut seals = Vec::new();
    for (id, path) in &moved {
        let bytes = read_file(fs, path)?;
        let header = SegmentHeader::decode(&bytes).ok();
        let bindings = bindings_for(header, *id);
        let from = if *id == at_segment && at_offset > 0 {
            at_offset as usize + 1
        } else {
            if let Some(h) = header {
                seen(h.first_epoch);
            }
            SEGMENT_HEADER_LEN
        };
        for (_, frame) in bindings
            .iter()
            .flat_map(|b| salvage_frames(*b, &bytes, from))
        {
            seen(frame.epoch);
            if frame.kind == FrameKind::Seal {
                seals.push(frame.epoch);
            }
        }
    }
    Ok(MidLogDamage {
        moved_to: aside.to_path_buf(),
        segments: moved.into_iter().map(|(_, p)| p).collect(),
        at_segment,
        at_offset,
        reason: reason.to_string(),
        epochs_seen: epochs,
        seals_seen: seals,
        resumed,
    })
}
