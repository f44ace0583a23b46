//! The key table's slot array: one zeroed allocation of fixed length, on transparent huge
//! pages where the kernel gives them, that grows in place where it can.
//!
//! Why: a check reads one slot at a random place in a table of tens or hundreds of MB. With
//! 4 KB pages nearly every such read also misses the TLB, and the page walk it starts misses
//! the cache too; growing the table takes a page fault per 4 KB. A 2 MB page covers 65,536
//! slots, so the walks and the faults mostly go away. Measured by `cargo bench -p
//! tidemark-benches --bench records -- dedup/` (the README, "The dedup state's own table").
//!
//! On Linux an array of at least [`HUGE_PAGE`] bytes is an anonymous mapping of its own,
//! whole huge pages aligned to a huge page and advised `MADV_HUGEPAGE` (with the system's THP
//! setting `madvise` or `always`; with `never`, or a kernel without THP, ordinary pages). A
//! fresh mapping reads as zeros, so nothing zeroes it: each page is faulted in (and zeroed by
//! the kernel) when first touched, the padding past the last slot only with the page it
//! shares with slots.
//!
//! **Growing** ([`Slots::extended`]) such an array moves its pages to a bigger aligned
//! mapping (`mremap`: page tables move, no byte is copied, no page is faulted in again) whose
//! new part is fresh zeros. Why: a growing key table used to allocate, zero and fill a new
//! array 1.5 times the old one and free the old: three times the final table's memory
//! faulted in over its growth, and, on virtual machines whose freed memory goes back to the
//! host, every one of those faults is slow (measured: the kernel's page zeroing was a fifth
//! of the reading thread's time in a dedup bench whose state grew to 2M keys). The key table
//! then moves its entries to their new homes inside the same array (`KeyTable::grow_to`).
//!
//! **Faulting in ahead** ([`Slots::fault_in_ahead`]). Moving pages is cheap, but the new
//! part's fresh pages are faulted in when the moved entries first land on them, on the thread
//! that grows the table: at ~0.36 GB/s of fresh memory on the VMs measured, most of a growth's
//! time, and every check waits for it. So a table nearing its growth has the mapping moved to
//! the size the growth will need first, and a thread of its own faults the new part in
//! (`MADV_POPULATE_WRITE`) while checks go on in the old part; the growth then finds its
//! memory resident. Invariant: while that thread runs, the mapping is neither moved nor
//! unmapped, and no slot past `len` is written (every such step waits for it first). Only
//! the new part is faulted in ahead: with ordinary 4 KB pages (no THP), the old mapping's
//! pages past its last slot are still faulted in by the growth itself.
//!
//! A smaller array, or any array off Linux, is an ordinary zeroed allocation, and growing it
//! copies. Either way the contents are the same: every slot all zero bytes ([`Slot::EMPTY`])
//! until written, and a grown array holds the old slots at the same indices.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use super::Slot;

/// The huge page size on x86-64 and most aarch64 kernels; an array this large or larger is
/// aligned to it.
const HUGE_PAGE: usize = 2 << 20;

/// Where a [`Slots`] array's memory comes from, and so how it is freed and grown.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backing {
    /// No memory (`len` 0, `ptr` dangling).
    Nothing,
    /// The global allocator, with this layout.
    Heap(Layout),
    /// An anonymous mapping of this many bytes (whole huge pages, aligned to a huge page).
    #[cfg(target_os = "linux")]
    Mapped(usize),
}

/// A fixed-length array of slots, all zero when made (see the module documentation).
///
/// Invariant: `ptr` points at `len` initialised slots in memory `backing` describes (or
/// dangles with `backing` [`Backing::Nothing`] when `len` is 0), owned by this value alone.
/// The bytes of a mapping past `len` slots were never written: they read as zeros.
pub(super) struct Slots {
    ptr: NonNull<Slot>,
    len: usize,
    backing: Backing,
    /// The thread faulting in the mapping's part past the slots ([`Slots::fault_in_ahead`]),
    /// while it may still run.
    faulting: Option<std::thread::JoinHandle<()>>,
}

// SAFETY: `Slots` owns its allocation alone, like a `Vec<Slot>`, and `Slot` is plain bytes.
unsafe impl Send for Slots {}
// SAFETY: shared access only reads, as for a `Vec<Slot>`.
unsafe impl Sync for Slots {}

/// The bytes of a mapping of `len` slots: whole huge pages.
#[cfg(target_os = "linux")]
fn mapped_bytes(len: usize) -> usize {
    bytes_of(len).size().next_multiple_of(HUGE_PAGE)
}

/// The bytes of `len` slots, or a panic naming the count: a table that large cannot exist.
fn bytes_of(len: usize) -> Layout {
    match Layout::array::<Slot>(len) {
        Ok(layout) => layout,
        Err(_) => panic!("the dedup key table cannot hold {len} slots: their size overflows"),
    }
}

impl Slots {
    /// `len` empty slots.
    pub(super) fn zeroed(len: usize) -> Self {
        let array = bytes_of(len);
        if len == 0 {
            return Self::default();
        }
        #[cfg(target_os = "linux")]
        if array.size() >= HUGE_PAGE {
            let size = mapped_bytes(len);
            if let Some(ptr) = mapping::map_aligned(size) {
                advise_huge_pages(ptr.as_ptr(), size);
                return Self {
                    ptr: ptr.cast(),
                    len,
                    backing: Backing::Mapped(size),
                    faulting: None,
                };
            }
            // No mapping to be had: the allocator says why below, or manages.
        }
        // SAFETY: `array` has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(array) };
        let Some(ptr) = NonNull::new(ptr.cast::<Slot>()) else {
            alloc::handle_alloc_error(array)
        };
        Self {
            ptr,
            len,
            backing: Backing::Heap(array),
            faulting: None,
        }
    }

    /// Faults every page of the array in now, split over `threads` threads at once
    /// (`MADV_POPULATE_WRITE`; a mapping's pages only, and nothing where the kernel refuses:
    /// they are then faulted in when first touched, as without this call). The contents do
    /// not change: a populated page reads as zeros, as an untouched one does.
    ///
    /// Why: a restart sizes the table for the WAL's changelog and the replay at once, then
    /// fills it from one thread, whose first touch of each fresh page waits for the host
    /// (~0.36 GB/s of fresh memory on the VMs measured). Two threads fault the pages in side
    /// by side while the store's load is paused: at 10M-key bench restarts, 255 and 289 ms to
    /// load 1.19M changelog keys against 419 ms for 1.24M on one thread (different kills;
    /// README, "Dedup's cost").
    pub(super) fn populate(&mut self, threads: usize) {
        self.finish_faulting();
        #[cfg(target_os = "linux")]
        if let Backing::Mapped(size) = self.backing {
            let base = self.ptr.as_ptr() as usize;
            // At least one part; never more parts than huge pages.
            let parts = threads.min(size / HUGE_PAGE).max(1);
            let part = (size / parts).next_multiple_of(HUGE_PAGE);
            let populate = |from: usize| {
                // Past the end when `parts` does not divide the array in whole huge pages
                // (`parts - 1` parts rounded up can cover it all): nothing left for this one.
                let len = part.min(size.saturating_sub(from));
                // SAFETY: `base + from .. + len` lies inside this array's own mapping (`from`
                // and `len` are whole huge pages within `size`), which stays put until the
                // scope below ends.
                unsafe { mapping::populate(base + from, len) };
            };
            std::thread::scope(|scope| {
                for i in 1..parts {
                    let spawned = std::thread::Builder::new()
                        .name("tidemark-fault-in".into())
                        .spawn_scoped(scope, move || populate(i * part));
                    if spawned.is_err() {
                        populate(i * part);
                    }
                }
                populate(0);
            });
        }
        #[cfg(not(target_os = "linux"))]
        let _ = threads;
    }

    /// Makes the mapping big enough for `len` slots (moved now, as [`Slots::extended`] would
    /// move it) without adding any, and faults its new part in on a thread of its own (see
    /// the module documentation). A hint: an array on the heap, one that has the room
    /// already, a refused move or a thread that cannot start leave it as it was or its new
    /// pages to their first touch. True when the mapping was moved.
    pub(super) fn fault_in_ahead(&mut self, len: usize) -> bool {
        #[cfg(target_os = "linux")]
        if let Backing::Mapped(size) = self.backing {
            let want = mapped_bytes(len);
            if want <= size || !self.remap(want) {
                return false;
            }
            let from = self.ptr.as_ptr() as usize + size;
            // SAFETY: `from .. + want - size` is the new part of this array's own mapping,
            // past every slot: the invariant keeps the mapping in place and those bytes
            // unwritten until this thread is joined.
            let fault_in = move || unsafe { mapping::populate(from, want - size) };
            self.faulting = match std::thread::Builder::new()
                .name("tidemark-fault-in".into())
                .spawn(fault_in)
            {
                Ok(thread) => Some(thread),
                Err(error) => {
                    tracing::debug!(%error, "no thread to fault in the dedup key table's next growth; its pages are faulted in on first touch");
                    None
                }
            };
            return true;
        }
        #[cfg(not(target_os = "linux"))]
        let _ = len;
        false
    }

    /// Moves this array's mapping to a new one of `want` bytes (more than now): its pages
    /// moved, the rest fresh zeros, advised huge pages; `len` unchanged. False, and nothing
    /// changed, where the kernel refuses or the array is not a mapping.
    #[cfg(target_os = "linux")]
    fn remap(&mut self, want: usize) -> bool {
        let Backing::Mapped(size) = self.backing else {
            return false;
        };
        self.finish_faulting();
        let Some(moved) = mapping::remap_aligned(self.ptr.cast(), size, want) else {
            return false;
        };
        advise_huge_pages(moved.as_ptr(), want);
        self.ptr = moved.cast();
        self.backing = Backing::Mapped(want);
        true
    }

    /// Waits for the thread [`Slots::fault_in_ahead`] started, if one may still run: before
    /// the mapping moves or goes, or slots past `len` are added.
    fn finish_faulting(&mut self) {
        if let Some(faulting) = self.faulting.take() {
            // A panic there (none is expected: it only asks the kernel) has faulted nothing
            // in that matters: the pages are faulted in on first touch.
            let _ = faulting.join();
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

    /// These slots followed by empty ones, `len` in all (at least as many as now): the same
    /// pages, moved, where the array is a mapping (see the module documentation); a copy
    /// otherwise.
    pub(super) fn extended(mut self, len: usize) -> Self {
        self.finish_faulting();
        let len = len.max(self.len);
        #[cfg(target_os = "linux")]
        if let Backing::Mapped(size) = self.backing {
            let want = mapped_bytes(len);
            // Where it fits, the mapping's bytes past the old slots were never written (the
            // invariant).
            if want <= size || self.remap(want) {
                self.len = len;
                return self;
            }
        }
        let mut bigger = Self::zeroed(len);
        bigger[..self.len].copy_from_slice(&self);
        bigger
    }
}

/// Anonymous mappings aligned to a huge page: made, and moved to a bigger one.
#[cfg(target_os = "linux")]
mod mapping {
    use std::ptr::NonNull;

    use super::HUGE_PAGE;

    /// A fresh read-write anonymous mapping of `size` bytes (a multiple of [`HUGE_PAGE`])
    /// starting at a multiple of [`HUGE_PAGE`]; `None` when the kernel refuses it.
    pub(super) fn map_aligned(size: usize) -> Option<NonNull<u8>> {
        let span = size.checked_add(HUGE_PAGE)?;
        // SAFETY: a new private anonymous mapping at an address the kernel picks: it touches
        // no memory of ours.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let (head, tail) = (aligned - start, span - (aligned - start) - size);
        // SAFETY: both ranges lie inside the mapping just made, outside `aligned..aligned +
        // size`, and start on page boundaries (the mapping and `aligned` do; so do the sizes).
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + size) as *mut libc::c_void, tail);
            }
        }
        NonNull::new(aligned as *mut u8)
    }

    /// Moves the mapping of `size` bytes at `at` (made by [`map_aligned`]) to a new aligned
    /// mapping of `want` bytes, its pages moved and the rest fresh zeros; `None` when the
    /// kernel refuses (the old mapping is then untouched, as `mremap` leaves it on failure).
    pub(super) fn remap_aligned(at: NonNull<u8>, size: usize, want: usize) -> Option<NonNull<u8>> {
        let target = map_aligned(want)?;
        // SAFETY: `at..at + size` is a whole mapping of ours, `target..target + want` another
        // (just made, which MREMAP_FIXED replaces): after success the old range is unmapped
        // and the caller holds only the new pointer.
        let moved = unsafe {
            libc::mremap(
                at.as_ptr().cast(),
                size,
                want,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                target.as_ptr().cast::<libc::c_void>(),
            )
        };
        if moved == libc::MAP_FAILED {
            // The target is left as it is: a failed MREMAP_FIXED may have unmapped it already,
            // and another thread may have mapped the range since, so unmapping it could free
            // memory that is not ours. Its address space leaks (no page of it was touched).
            return None;
        }
        NonNull::new(moved.cast::<u8>())
    }

    /// Faults in `len` bytes at `at` (`MADV_POPULATE_WRITE`): the pages read as zeros, as
    /// before, but are resident. Where the kernel refuses (too old for the advice, or out of
    /// memory), the pages are faulted in when first touched instead.
    ///
    /// # Safety
    /// `at..at + len` must lie in a mapping of ours (page-aligned), which stays mapped until
    /// this returns.
    pub(super) unsafe fn populate(at: usize, len: usize) {
        if len == 0 {
            return;
        }
        // SAFETY: the caller's promise; populating writes no byte the program sees.
        let rc = unsafe { libc::madvise(at as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) };
        if rc != 0 {
            tracing::debug!(
                bytes = len,
                error = %std::io::Error::last_os_error(),
                "the dedup key table's pages not faulted in ahead; they are on first touch"
            );
        }
    }

    /// Unmaps a mapping made by [`map_aligned`] or [`remap_aligned`].
    ///
    /// # Safety
    /// `at..at + size` must be such a mapping, with nothing pointing into it any more.
    pub(super) unsafe fn unmap(at: NonNull<u8>, size: usize) {
        // SAFETY: the caller's promise.
        unsafe { libc::munmap(at.as_ptr().cast(), size) };
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

impl Default for Slots {
    fn default() -> Self {
        Self {
            ptr: NonNull::dangling(),
            len: 0,
            backing: Backing::Nothing,
            faulting: None,
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.finish_faulting();
        match self.backing {
            Backing::Nothing => {}
            // SAFETY: allocated in `zeroed` with this layout, and owned by `self` alone.
            Backing::Heap(layout) => unsafe { alloc::dealloc(self.ptr.as_ptr().cast(), layout) },
            // SAFETY: mapped in `zeroed`, `extended` or `fault_in_ahead` with this size, owned
            // by `self` alone, and no thread faults it in any more (joined above).
            #[cfg(target_os = "linux")]
            Backing::Mapped(size) => unsafe { mapping::unmap(self.ptr.cast(), size) },
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

    /// A mapped array grows with its slots where they were, at every step of a table's
    /// growth (by half, as the key table grows), through extensions that fit the mapping
    /// (same pages) and that do not (moved), and its new slots are empty.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_mapped_array_keeps_its_slots_as_it_grows() {
        let mut slots = Slots::zeroed(HUGE_PAGE / 32 + 1);
        assert!(
            matches!(slots.backing, Backing::Mapped(_)),
            "a huge-page-sized array is its own mapping"
        );
        let mut written = 0;
        let mut moved = 0;
        for _ in 0..6 {
            for (i, s) in slots.iter_mut().enumerate().skip(written) {
                s.0[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                s.0[31] = 0xAB;
            }
            written = slots.len();
            let before = slots.as_ptr();
            // A few slots more (the overflow area lengthened: fits the mapping's padding),
            // then half as many again (a new mapping).
            slots = slots.extended(written + 3);
            assert_eq!(
                slots.as_ptr(),
                before,
                "a few slots more fit the same mapping"
            );
            slots = slots.extended(written + written / 2);
            moved += usize::from(slots.as_ptr() != before);
            assert_eq!(slots.as_ptr() as usize % HUGE_PAGE, 0);
            for (i, s) in slots.iter().enumerate() {
                if i < written {
                    assert_eq!(s.0[..8], (i as u64 + 1).to_le_bytes(), "slot {i}");
                    assert_eq!(s.0[31], 0xAB);
                    assert!(s.0[8..31].iter().all(|&b| b == 0));
                } else {
                    assert_eq!(s.0, [0u8; 32], "new slot {i} of {}", slots.len());
                }
            }
        }
        assert!(moved > 0, "no growth needed a bigger mapping");
    }

    /// Faulting in ahead moves the mapping to the size asked for without adding a slot and
    /// keeps every slot; its new part is resident before anything touches it, and the
    /// extension that follows fits the same mapping, its new slots empty.
    #[test]
    #[cfg(target_os = "linux")]
    fn faulting_in_ahead_readies_the_next_extension() {
        let mut slots = Slots::zeroed(HUGE_PAGE / 32 * 2);
        for (i, s) in slots.iter_mut().enumerate() {
            s.0[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        }
        let len = slots.len();
        slots.fault_in_ahead(len * 3);
        assert_eq!(slots.len(), len, "no slot added");
        slots.finish_faulting();
        let kb = (len * 3 * std::mem::size_of::<Slot>() / 1024) as u64;
        let resident = smaps_kb(slots.as_ptr() as usize, "Rss:").expect("the array in smaps");
        assert!(
            resident >= kb,
            "{resident} kB resident of the {kb} kB made ready, 2/3 of it never touched"
        );
        let ready = slots.as_ptr();
        let slots = slots.extended(len * 3);
        assert_eq!(
            slots.as_ptr(),
            ready,
            "the extension fits the mapping made ahead"
        );
        for (i, s) in slots.iter().enumerate() {
            if i < len {
                assert_eq!(s.0[..8], (i as u64 + 1).to_le_bytes(), "slot {i}");
                assert!(s.0[8..].iter().all(|&b| b == 0));
            } else {
                assert_eq!(s.0, [0u8; 32], "new slot {i}");
            }
        }
    }

    /// An array extended while its pages are being faulted in ahead waits for that thread
    /// first (none is left running: the mapping never moves under it), one dropped at once
    /// does too (nothing to see but that it returns), and a heap array ignores the hint.
    #[test]
    fn an_array_faulting_in_ahead_can_be_dropped_or_grown_at_once() {
        for _ in 0..5 {
            let mut slots = Slots::zeroed(HUGE_PAGE / 32);
            slots.fault_in_ahead(HUGE_PAGE / 32 * 4);
            drop(slots);
            let mut slots = Slots::zeroed(HUGE_PAGE / 32);
            assert!(slots.fault_in_ahead(HUGE_PAGE / 32 * 4));
            assert!(slots.faulting.is_some(), "a thread faults the new part in");
            let slots = slots.extended(HUGE_PAGE / 32 * 5);
            assert!(
                slots.faulting.is_none(),
                "extended before the thread was joined"
            );
            assert!(slots.iter().all(|s| s.0 == [0u8; 32]));
        }
        let mut small = Slots::zeroed(100);
        small[3].0[0] = 1;
        assert!(!small.fault_in_ahead(10_000));
        assert_eq!(small.len(), 100);
        assert_eq!(small[3].0[0], 1);
        assert!(small.faulting.is_none());
    }

    /// Growing never shrinks, and a small (heap) array grows by a copy with the same result.
    #[test]
    fn extending_to_fewer_slots_keeps_them_all() {
        let mut slots = Slots::zeroed(10);
        slots[9].0[0] = 7;
        let same = slots.extended(3);
        assert_eq!(same.len(), 10);
        assert_eq!(same[9].0[0], 7);
        let mut big = Slots::zeroed(HUGE_PAGE / 32 * 2);
        big[5].0[0] = 9;
        let big = big.extended(1);
        assert_eq!(big.len(), HUGE_PAGE / 32 * 2);
        assert_eq!(big[5].0[0], 9);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_huge_array_is_aligned_to_a_huge_page() {
        let slots = Slots::zeroed(HUGE_PAGE / 32 * 2);
        assert_eq!(slots.as_ptr() as usize % HUGE_PAGE, 0);
    }

    /// The kB of `AnonHugePages` in the mapping of `/proc/self/smaps` that holds `at`.
    fn huge_kb_backing(at: usize) -> Option<u64> {
        smaps_kb(at, "AnonHugePages:")
    }

    /// The kB a `field` of `/proc/self/smaps` gives for the mapping that holds `at`.
    fn smaps_kb(at: usize, field: &str) -> Option<u64> {
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
                if let Some(kb) = line.strip_prefix(field) {
                    return kb.trim().trim_end_matches("kB").trim().parse().ok();
                }
            }
        }
        None
    }

    /// A populated array is resident before anything is written to it, and still all empty
    /// slots.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_populated_array_is_resident_and_empty() {
        let mut slots = Slots::zeroed(HUGE_PAGE / 32 * 8);
        let at = slots.as_ptr() as usize;
        let before = smaps_kb(at, "Rss:").expect("the array's mapping in smaps");
        assert!(
            before < 4 * 1024,
            "{before} kB resident before anything touched it"
        );
        assert_populated_whole(&mut slots, 2);
    }

    /// Populates `slots` on `threads` threads, then checks every page of it is resident and
    /// every slot still empty.
    fn assert_populated_whole(slots: &mut Slots, threads: usize) {
        slots.populate(threads);
        let at = slots.as_ptr() as usize;
        let kb = (slots.len() * std::mem::size_of::<Slot>() / 1024) as u64;
        let after = smaps_kb(at, "Rss:").expect("the array's mapping in smaps");
        assert!(after >= kb, "{after} kB resident after populating {kb} kB");
        assert!(slots.iter().all(|s| s.0 == Slot::EMPTY.0));
    }

    /// Split in parts that do not divide it (5 huge pages over 4 threads: parts of 2, the
    /// last one past the end), the array is populated whole, and no part reaches past it.
    #[test]
    #[cfg(target_os = "linux")]
    fn an_array_split_unevenly_is_populated_whole() {
        assert_populated_whole(&mut Slots::zeroed(HUGE_PAGE / 32 * 5), 4);
    }

    #[test]
    fn a_huge_array_is_backed_by_huge_pages_where_the_kernel_allows_them() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !(thp.contains("[madvise]") || thp.contains("[always]")) {
            eprintln!("transparent huge pages are off here ({thp:?}): nothing to check");
            return;
        }
        // Pages are faulted in when first written (a fresh mapping reads as zeros).
        let mut slots = Slots::zeroed(HUGE_PAGE / 32 * 4);
        slots.iter_mut().for_each(|s| s.0[0] = 1);
        let kb = huge_kb_backing(slots.as_ptr() as usize).expect("the array's mapping in smaps");
        assert!(
            kb >= (HUGE_PAGE / 1024) as u64,
            "an 8 MB array advised MADV_HUGEPAGE has {kb} kB on huge pages (THP: {thp:?})"
        );
        // Moved to a bigger mapping, its pages stay huge (aligned at both ends of the move).
        let slots = slots.extended(HUGE_PAGE / 32 * 6);
        let moved = huge_kb_backing(slots.as_ptr() as usize).expect("the grown array in smaps");
        assert!(
            moved >= kb,
            "the grown array has {moved} kB on huge pages, the old one had {kb} kB"
        );
    }
}
