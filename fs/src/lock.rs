//! Exclusive advisory locks on files (`flock`), for "one process at a time" rules: the engine's
//! state directory, a replica's writer.
//!
//! Invariant: the lock belongs to the open file returned in [`LockAttempt::Acquired`]; the
//! kernel releases it when that file is closed or the process dies (a SIGKILL never leaves a
//! stale lock). The file's content only names the holder, for the error of the next process.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::Path;

/// What trying the lock found.
#[derive(Debug)]
pub enum LockAttempt {
    /// The lock is ours while this file is open.
    Acquired(File),
    /// Another open file holds it; `holder` is what its owner wrote into the file (trimmed,
    /// lines joined with ", "; "holder unknown" when it wrote nothing).
    Held {
        /// The holder's own description.
        holder: String,
    },
}

/// Opens (creating it if needed) `path` and takes an exclusive `flock` on it without waiting.
pub fn try_lock_file(path: &Path) -> io::Result<LockAttempt> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // SAFETY: flock on a descriptor this function owns for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(LockAttempt::Acquired(file));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(e);
    }
    let mut holder = String::new();
    let _ = file.read_to_string(&mut holder);
    let holder = holder.trim().replace('\n', ", ");
    Ok(LockAttempt::Held {
        holder: if holder.is_empty() {
            "holder unknown".into()
        } else {
            holder
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_file_finds_the_lock_held_until_the_first_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCK");
        let LockAttempt::Acquired(mut first) = try_lock_file(&path).unwrap() else {
            panic!("the first attempt must get the lock");
        };
        std::io::Write::write_all(&mut first, b"pid 1\nhost h\n").unwrap();
        match try_lock_file(&path).unwrap() {
            LockAttempt::Held { holder } => assert_eq!(holder, "pid 1, host h"),
            LockAttempt::Acquired(_) => panic!("two holders"),
        }
        drop(first);
        assert!(matches!(
            try_lock_file(&path).unwrap(),
            LockAttempt::Acquired(_)
        ));
    }
}
