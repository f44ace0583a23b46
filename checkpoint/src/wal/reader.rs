//! [`WalReader`]: streams frames from a position across segments, through the seam.

use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tidemark_fs::{std_fs, ReadableFile, SharedFs};

use super::error::{io_err, WalError};
use super::format::{frame_len, Frame, SegmentHeader, SEGMENT_HEADER_LEN};
use super::segment::{list_segments, open_segment, read_frame, ReadFrame};
use super::WalPosition;

/// The segment being read: its file, the offset of its next frame, its header.
type OpenReading = (BufReader<Box<dyn ReadableFile>>, u64, SegmentHeader);

/// Streams frames from a position across segments, one frame in memory at a time.
pub struct WalReader {
    fs: SharedFs,
    segments: Vec<(u64, PathBuf)>,
    from: WalPosition,
    index: usize,
    current: Option<OpenReading>,
    failed: bool,
    error: Option<WalError>,
}

impl std::fmt::Debug for WalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalReader")
            .field("segments", &self.segments)
            .field("from", &self.from)
            .field("index", &self.index)
            .finish()
    }
}

impl WalReader {
    /// A reader of the log in `dir` from `from`, on the real file system.
    pub fn new(dir: &Path, from: WalPosition) -> Self {
        Self::with_fs(std_fs(), dir, from)
    }

    /// A reader of the log in `dir` from `from`, reading through `fs` (the WAL's own).
    pub fn with_fs(fs: SharedFs, dir: &Path, from: WalPosition) -> Self {
        let (segments, error) = match list_segments(&*fs, dir) {
            Ok(s) => (
                s.into_iter()
                    .filter(|(id, _)| *id >= from.segment)
                    .collect(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e)),
        };
        Self {
            fs,
            segments,
            from,
            index: 0,
            current: None,
            failed: false,
            error,
        }
    }

    fn open_next(&mut self) -> Result<bool, WalError> {
        let Some((id, path)) = self.segments.get(self.index).cloned() else {
            return Ok(false);
        };
        self.index += 1;
        let (mut f, header) = open_segment(&*self.fs, &path)?;
        let header = match header {
            Ok(h) if h.segment_id == id => h,
            // A reused file renamed to the next segment before its new header landed (a roll
            // in progress, or cut short by a crash the next open repairs): the end of the log.
            Ok(_) if self.index == self.segments.len() => return Ok(false),
            Ok(h) => {
                return Err(WalError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!("header names segment {} but file is {id}", h.segment_id),
                })
            }
            Err(reason) => {
                return Err(WalError::Corrupt {
                    path,
                    offset: 0,
                    reason,
                })
            }
        };
        let start = if id == self.from.segment {
            self.from.offset.max(SEGMENT_HEADER_LEN as u64)
        } else {
            SEGMENT_HEADER_LEN as u64
        };
        f.seek(SeekFrom::Start(start))
            .map_err(io_err("seek", &path))?;
        self.current = Some((BufReader::with_capacity(1 << 16, f), start, header));
        Ok(true)
    }
}

impl Iterator for WalReader {
    type Item = Result<(WalPosition, Frame), WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            self.failed = true;
            return Some(Err(e));
        }
        if self.failed {
            return None;
        }
        loop {
            if self.current.is_none() {
                match self.open_next() {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            let index = self.index;
            let (reader, pos, header) = self.current.as_mut()?;
            let (id, path) = &self.segments[index - 1];
            match read_frame(header.binding(), reader) {
                Err(e) => {
                    self.failed = true;
                    return Some(Err(WalError::Io {
                        op: "read",
                        path: path.clone(),
                        source: e,
                    }));
                }
                Ok(ReadFrame::Eof) => self.current = None,
                // The live end of a reused file: the older segment's bytes follow what the
                // writer has written so far (a reader of a running pipeline's log, such as
                // `tidemark status`, gets there; a segment before the last was cut to its
                // frames when the writer moved on).
                Ok(ReadFrame::Bad(_)) if header.recycled && index == self.segments.len() => {
                    self.current = None;
                    return None;
                }
                Ok(ReadFrame::Bad(why)) => {
                    self.failed = true;
                    return Some(Err(WalError::Corrupt {
                        path: path.clone(),
                        offset: *pos,
                        reason: why.into(),
                    }));
                }
                Ok(ReadFrame::Frame(frame)) => {
                    let at = WalPosition {
                        segment: *id,
                        offset: *pos,
                    };
                    *pos += frame_len(frame.payload.len()) as u64;
                    return Some(Ok((at, frame)));
                }
            }
        }
    }
}
