//! CPU time used, by the whole process and by the calling thread (`getrusage`).
//!
//! Why: on a machine with few cores a pipeline's throughput is bounded by the CPU each record
//! costs, summed over every thread, as much as by any one stage's speed. The run summary
//! reports them, so `tidemark bench` can say how many cores a run kept busy, what a record
//! cost, whether the thread that reads, logs and decides every record in WAL order (the one
//! stage that cannot be split across threads) was the bound, and what the dedup state writer's
//! thread took. It lives here, the lowest crate with a thread to measure (the state writer).

use std::time::Duration;

/// User plus system CPU time of every thread the process has had, ended ones included
/// (`None` if the system does not say).
pub fn process() -> Option<Duration> {
    usage(libc::RUSAGE_SELF)
}

/// User plus system CPU time of the calling thread (Linux; `None` elsewhere).
pub fn this_thread() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        usage(libc::RUSAGE_THREAD)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

fn usage(who: libc::c_int) -> Option<Duration> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` fills the whole `rusage` it is pointed at, or fails and writes
    // nothing we read.
    if unsafe { libc::getrusage(who, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: zeroed, then filled by the call that succeeded.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Some(time(usage.ru_utime) + time(usage.ru_stime))
}

// Thread CPU time is measured on Linux only (`this_thread`).
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Spins on the calling thread until it has used `cpu` more CPU time (bounded by a
    /// generous wall-clock limit, so a machine that starves the test fails it rather than
    /// hanging).
    fn spin(cpu: Duration) {
        let start = this_thread().unwrap();
        let limit = std::time::Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        while this_thread().unwrap() < start + cpu {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            assert!(
                std::time::Instant::now() < limit,
                "no CPU time given in 30 s"
            );
        }
    }

    #[test]
    fn the_thread_and_the_process_both_count_this_threads_work() {
        let (thread0, process0) = (this_thread().unwrap(), process().unwrap());
        spin(Duration::from_millis(60));
        assert!(this_thread().unwrap() - thread0 >= Duration::from_millis(60));
        assert!(process().unwrap() - process0 >= Duration::from_millis(60));
    }

    #[test]
    fn an_ended_threads_work_counts_for_the_process_and_not_for_the_caller() {
        let (thread0, process0) = (this_thread().unwrap(), process().unwrap());
        std::thread::spawn(|| spin(Duration::from_millis(80)))
            .join()
            .unwrap();
        assert!(process().unwrap() - process0 >= Duration::from_millis(80));
        // This thread only waited for the other (a little CPU to start and join it).
        assert!(this_thread().unwrap() - thread0 < Duration::from_millis(40));
    }
}
