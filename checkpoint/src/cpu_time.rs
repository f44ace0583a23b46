//! CPU time used, by the whole process and by the calling thread (`getrusage`), and the time
//! the calling thread waited for a core (`/proc/thread-self/schedstat`).
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

/// Time the calling thread spent runnable but waiting for a core (the kernel's run delay,
/// `/proc/thread-self/schedstat`; Linux only, `None` elsewhere or where the kernel keeps no
/// scheduler statistics). Why: on a machine with few cores, a thread on the critical path
/// loses throughput both to its own CPU time and to the cores other threads take from it; the
/// run summary reports this beside the reading thread's CPU time, so `tidemark bench` can
/// tell the two apart.
pub fn this_thread_waiting() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        parse_run_delay(&text)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The run delay of a `schedstat` line: `<ns on a core> <ns waiting for one> <timeslices>`.
/// `None` when the time on a core is 0: the calling thread is on one, so the kernel keeps no
/// statistics (it then reads `0 0 0`).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_run_delay(schedstat: &str) -> Option<Duration> {
    let mut fields = schedstat.split_ascii_whitespace();
    let on_core: u64 = fields.next()?.parse().ok()?;
    let waiting: u64 = fields.next()?.parse().ok()?;
    fields.next()?;
    (on_core > 0).then(|| Duration::from_nanos(waiting))
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

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn the_run_delay_is_the_second_field() {
        assert_eq!(
            parse_run_delay("1556000000 1032000123 6454\n"),
            Some(Duration::from_nanos(1_032_000_123))
        );
        assert_eq!(parse_run_delay(""), None);
        assert_eq!(parse_run_delay("15 x 3"), None);
        assert_eq!(parse_run_delay("15 16"), None, "three fields or none");
        assert_eq!(parse_run_delay("0 0 0\n"), None, "no statistics kept");
    }
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

    /// Three threads pinned to one core, all spinning: each waits for the core while the
    /// others have it, so the measured thread's wait grows by a good share of its CPU time.
    #[test]
    fn a_thread_sharing_its_core_waits_for_it() {
        fn pin_to(cpu: usize) {
            // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it; the call
            // reads it and changes only the calling thread's affinity.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                assert_eq!(
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                    0
                );
            }
        }
        // SAFETY: sched_getcpu only reads the calling thread's current CPU.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).unwrap();
        /// Stops the rivals however the test ends (a failed assertion included).
        struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_rivals = StopOnDrop(stop.clone());
        let rivals: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    pin_to(cpu);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::black_box(0u64);
                    }
                })
            })
            .collect();
        pin_to(cpu);
        let waited0 = this_thread_waiting().expect("the kernel keeps schedstat");
        spin(Duration::from_millis(100));
        let waited = this_thread_waiting().unwrap() - waited0;
        drop(stop_rivals);
        for r in rivals {
            r.join().unwrap();
        }
        // With two rivals on the core it gets about a third of it: ~200 ms of waiting for
        // 100 ms of CPU (more on a busy machine). Asked: 150 ms, more than the thread's own
        // CPU time, so a reading of the time on a core instead would fail.
        assert!(
            waited >= Duration::from_millis(150),
            "waited {waited:?} for 100 ms of CPU on a shared core"
        );
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
