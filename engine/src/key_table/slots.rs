//! The key table's slot array: one zeroed allocation of fixed length, on transparent huge
//! pages where the kernel gives them.
//!
//! Why: a check reads one slot at a random place in a table of tens or hundreds of MB. With
//! 4 KB pages nearly every such read also misses the TLB, and the page walk it starts misses
//! the cache too; growing the table takes a page fault per 4 KB. A 2 MB page covers 65,536
//! slots, so the walks and the faults mostly go away. Measured by `cargo bench -p
//! tidemark-benches --bench records -- dedup/` (the README, "The dedup state's own table").
//!
//! An array of at least [`HUGE_PAGE`] bytes is allocated aligned to a huge page, with its
//! size rounded up to whole huge pages, and advised `MADV_HUGEPAGE` before it is zeroed, so
//! the zeroing faults it in as huge pages (with the system's THP setting `madvise` or
//! `always`; with `never`, on a kernel without THP, or off Linux the array is ordinary
//! memory). A smaller array is an ordinary zeroed allocation. Either way the contents are the
//! same: every slot all zero bytes ([`Slot::EMPTY`]) until written. The padding up to a whole
//! huge page (under 2 MB) is zeroed too, so it counts in the resident size.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use super::Slot;

/// The huge page size on x86-64 and most aarch64 kernels; an array this large or larger is
/// aligned to it.
const HUGE_PAGE: usize = 2 << 20;

/// A fixed-length array of slots, all zero when made (see the module documentation).
///
/// Invariant: `ptr` points at `len` initialised slots, allocated with `layout` (or dangling
/// with `layout` `None` when `len` is 0), and owned by this value alone.
pub(super) struct Slots {
    ptr: NonNull<Slot>,
    len: usize,
    layout: Option<Layout>,
}

// SAFETY: `Slots` owns its allocation alone, like a `Vec<Slot>`, and `Slot` is plain bytes.
unsafe impl Send for Slots {}
// SAFETY: shared access only reads, as for a `Vec<Slot>`.
unsafe impl Sync for Slots {}

impl Slots {
    /// `len` empty slots.
    pub(super) fn zeroed(len: usize) -> Self {
        let Ok(array) = Layout::array::<Slot>(len) else {
            panic!("the dedup key table cannot hold {len} slots: their size overflows")
        };
        if len == 0 {
            return Self::default();
        }
        let layout = match array.align_to(HUGE_PAGE) {
            // Whole huge pages (the layout's invariant keeps the rounded size valid).
            Ok(aligned) if array.size() >= HUGE_PAGE => aligned.pad_to_align(),
            _ => array,
        };
        let huge = layout.align() == HUGE_PAGE;
        let ptr = if huge {
            // SAFETY: `layout` has a non-zero size.
            let raw = unsafe { alloc::alloc(layout) };
            if !raw.is_null() {
                advise_huge_pages(raw, layout.size());
                // SAFETY: `raw` is a fresh allocation of `layout.size()` bytes.
                unsafe { std::ptr::write_bytes(raw, 0, layout.size()) };
            }
            raw
        } else {
            // SAFETY: `layout` has a non-zero size.
            unsafe { alloc::alloc_zeroed(layout) }
        };
        let Some(ptr) = NonNull::new(ptr.cast::<Slot>()) else {
            alloc::handle_alloc_error(layout)
        };
        Self {
            ptr,
            len,
            layout: Some(layout),
        }
    }

    /// Starts fetching slot `at` into the CPU's caches without waiting for it (no effect
    /// past the end). A prefetch retires at once, where a load holds its place in the CPU's
    /// reorder buffer until its data arrives: behind a run of loads that miss, the buffer
    /// fills and the run stalls, while a run of prefetches leaves the core going on (the
    /// misses in flight at once are still bounded by the core's fill buffers).
    pub(super) fn prefetch(&self, at: usize) {
        if at >= self.len {
            return;
        }
        // SAFETY: `at < len`, so the address is inside the allocation; a prefetch reads
        // nothing the program sees and cannot fault.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(self.ptr.as_ptr().add(at).cast::<i8>());
        }
        #[cfg(not(target_arch = "x86_64"))]
        std::hint::black_box(self[at][0]);
    }

    /// A copy of these slots followed by empty ones, `len` in all (at least as many as now).
    pub(super) fn extended(&self, len: usize) -> Self {
        let mut bigger = Self::zeroed(len.max(self.len));
        bigger[..self.len].copy_from_slice(self);
        bigger
    }
}

/// Asks the kernel to back `len` bytes at `at` with huge pages. A hint: a kernel that does
/// not give them (THP `never`, or not built in) leaves ordinary pages, which work the same,
/// slower.
#[cfg(target_os = "linux")]
fn advise_huge_pages(at: *mut u8, len: usize) {
    // SAFETY: `at..at + len` is one allocation of ours, aligned to a page; `madvise` with
    // `MADV_HUGEPAGE` changes how it is backed, never its contents or validity.
    let rc = unsafe { libc::madvise(at.cast(), len, libc::MADV_HUGEPAGE) };
    if rc != 0 {
        tracing::debug!(
            bytes = len,
            error = %std::io::Error::last_os_error(),
            "huge pages refused for the dedup key table; it uses ordinary pages"
        );
    }
}

/// Off Linux there is no `MADV_HUGEPAGE`: ordinary pages.
#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_at: *mut u8, _len: usize) {}

impl Default for Slots {
    fn default() -> Self {
        Self {
            ptr: NonNull::dangling(),
            len: 0,
            layout: None,
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        if let Some(layout) = self.layout {
            // SAFETY: allocated in `zeroed` with this layout, and owned by `self` alone.
            unsafe { alloc::dealloc(self.ptr.as_ptr().cast(), layout) };
        }
    }
}

impl std::ops::Deref for Slots {
    type Target = [Slot];
    fn deref(&self) -> &[Slot] {
        // SAFETY: the type's invariant (`len` initialised slots at `ptr`, or dangling and 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Slots {
    fn deref_mut(&mut self) -> &mut [Slot] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_empty_when_made_at_every_size() {
        for len in [
            0,
            1,
            3,
            HUGE_PAGE / 32 - 1,
            HUGE_PAGE / 32,
            HUGE_PAGE / 32 * 3 + 5,
        ] {
            let slots = Slots::zeroed(len);
            assert_eq!(slots.len(), len);
            assert!(slots.iter().all(|s| s.0 == [0u8; 32]), "len {len}");
        }
    }

    #[test]
    fn extending_keeps_the_slots_and_adds_empty_ones() {
        let mut slots = Slots::zeroed(100);
        for (i, s) in slots.iter_mut().enumerate() {
            s.0[0] = i as u8 + 1;
        }
        let bigger = slots.extended(HUGE_PAGE / 32 + 10);
        assert_eq!(bigger.len(), HUGE_PAGE / 32 + 10);
        assert!(bigger[..100]
            .iter()
            .enumerate()
            .all(|(i, s)| s.0[0] == i as u8 + 1));
        assert!(bigger[100..].iter().all(|s| s.0 == [0u8; 32]));
    }

    #[test]
    fn a_huge_array_is_aligned_to_a_huge_page() {
        let slots = Slots::zeroed(HUGE_PAGE / 32 * 2);
        assert_eq!(slots.as_ptr() as usize % HUGE_PAGE, 0);
    }

    /// The kB of `AnonHugePages` in the mapping of `/proc/self/smaps` that holds `at`.
    fn huge_kb_backing(at: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((start, end)) = range.split_once('-') {
                if let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                ) {
                    inside = (start..end).contains(&at);
                    continue;
                }
            }
            if inside {
                if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                    return kb.trim().trim_end_matches("kB").trim().parse().ok();
                }
            }
        }
        None
    }

    #[test]
    fn a_huge_array_is_backed_by_huge_pages_where_the_kernel_allows_them() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !(thp.contains("[madvise]") || thp.contains("[always]")) {
            eprintln!("transparent huge pages are off here ({thp:?}): nothing to check");
            return;
        }
        let slots = Slots::zeroed(HUGE_PAGE / 32 * 4);
        let kb = huge_kb_backing(slots.as_ptr() as usize).expect("the array's mapping in smaps");
        assert!(
            kb >= (HUGE_PAGE / 1024) as u64,
            "an 8 MB array advised MADV_HUGEPAGE has {kb} kB on huge pages (THP: {thp:?})"
        );
    }
}
