//! Work split in parts over scoped threads: the store's two uses (a big lookup in two halves,
//! a waited-for state write in parts) share how parts are started, joined and accounted.

use std::path::Path;
use std::time::Duration;

use super::StoreError;

/// Runs `work(i)` for each of `parts` parts: part 0 on this thread, each other on a thread
/// `thread()` makes, or on this thread too when that thread cannot start (same results, only
/// slower). Returns the results in part order and the CPU time the other threads used. The
/// first error wins; a thread that panicked fails the whole with [`StoreError::Foreign`]
/// naming `path` and saying what it was `doing`.
pub(super) fn on_threads<T: Send>(
    parts: usize,
    thread: impl Fn() -> std::thread::Builder,
    path: &Path,
    doing: &str,
    work: impl Fn(usize) -> Result<T, StoreError> + Sync,
) -> Result<(Vec<T>, Duration), StoreError> {
    let work = &work;
    let mut helper_cpu = Duration::ZERO;
    let results: Vec<Result<T, StoreError>> = std::thread::scope(|scope| {
        let others: Vec<_> = (1..parts)
            .map(|i| {
                thread()
                    .spawn_scoped(scope, move || (work(i), crate::cpu_time::this_thread()))
                    .map_err(|_| i)
            })
            .collect();
        let mut results = vec![work(0)];
        for other in others {
            results.push(match other {
                Ok(handle) => match handle.join() {
                    Ok((result, cpu)) => {
                        helper_cpu += cpu.unwrap_or_default();
                        result
                    }
                    Err(_) => Err(StoreError::Foreign {
                        path: path.to_path_buf(),
                        message: format!("a thread {doing} panicked"),
                    }),
                },
                // No thread: this one does that part too.
                Err(i) => work(i),
            });
        }
        results
    });
    let results = results
        .into_iter()
        .collect::<Result<Vec<T>, StoreError>>()?;
    Ok((results, helper_cpu))
}
