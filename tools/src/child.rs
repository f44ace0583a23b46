//! Child processes the tools start (pipelines, followers): never left running behind an early
//! return.

use std::io::{self, Read};
use std::process::{Child, Output};

/// A child process that is SIGKILLed and reaped when dropped while still running: an error
/// (`?`) between its start and its wait cannot leave a pipeline writing to a table on its own.
#[derive(Debug)]
pub struct KillOnDrop(Child);

impl KillOnDrop {
    /// Takes charge of `child`.
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    /// Like [`Child::wait_with_output`]: reads the child's piped stdout and stderr to their
    /// ends (stderr on a thread of its own, so neither pipe can fill and stall the child) and
    /// waits for it to exit.
    pub fn wait_with_output(mut self) -> io::Result<Output> {
        let stderr = self.0.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                e.read_to_end(&mut buf).map(|_| buf)
            })
        });
        let mut stdout = Vec::new();
        if let Some(mut out) = self.0.stdout.take() {
            out.read_to_end(&mut stdout)?;
        }
        let stderr = match stderr {
            Some(t) => t
                .join()
                .map_err(|_| io::Error::other("the stderr reader panicked"))??,
            None => Vec::new(),
        };
        let status = self.0.wait()?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn a_dropped_child_is_killed_and_reaped() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        drop(KillOnDrop::new(child));
        // Reaped by the drop: the pid no longer names a process of ours.
        // SAFETY: kill(2) with signal 0 only checks the pid.
        assert_eq!(unsafe { libc::kill(pid, 0) }, -1);
    }

    #[test]
    fn wait_with_output_reads_both_pipes_and_the_status() {
        let child = Command::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = KillOnDrop::new(child).wait_with_output().unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
    }
}
