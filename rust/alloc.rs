//! A cache of freed mid-sized heap blocks, so that a training loop, which makes the same calls
//! with the same shapes step after step, gets its outputs and scratch buffers back warm instead
//! of from the OS.
//!
//! Why: an output freed by NumPy goes back to glibc's malloc, which returns blocks of this size
//! to the system (mmap'd, or trimmed off the heap top), so the next call's buffer arrives as
//! fresh pages and each 4 KiB page costs a fault on first touch. On the development VM a fault
//! costs about 2 µs: ReLU over LeNet's first feature maps (1.2 MB) took 720 µs of which 550 µs
//! were its 293 faults. Blocks of at least `HUGE_PAGE_MIN_BYTES` are huge-page advised
//! (`element::zeros_vec`) and fault once per 2 MiB, so they are left to the system.
//!
//! `CachingAllocator` wraps the system allocator. A freed block of `MIN_BYTES..=MAX_BYTES` (its
//! size rounded up to whole pages) is kept, newest first, while the cache holds at most
//! `CAPACITY_BYTES` and `SLOTS` blocks; the oldest are freed to make room. An allocation of the
//! same rounded size takes the newest such block (zeroed first for `alloc_zeroed`). Every other
//! size goes straight to the system. The Python extension installs it as the global allocator
//! of its own shared library (`python` feature), so it serves only rconv's Rust allocations;
//! Rust users of the crate keep their own allocator. `release()` empties the cache (the
//! benchmark's peak-memory measurement starts from it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// Smallest cached block: below it glibc's heap keeps freed memory itself.
const MIN_BYTES: usize = 64 << 10;
/// Largest cached block: larger buffers are huge-page advised and fault rarely.
const MAX_BYTES: usize = crate::element::HUGE_PAGE_MIN_BYTES;
/// Most bytes the cache keeps: a LeNet-5 step at batch 64 frees about 10 MB of blocks in range.
const CAPACITY_BYTES: usize = 32 << 20;
/// Most blocks the cache keeps (a fixed table: the allocator must not allocate for itself).
const SLOTS: usize = 48;
const PAGE: usize = 4096;
/// Blocks up to this alignment come from plain `malloc`, whose `free` ignores the size.
const MAX_ALIGN: usize = 16;

/// The size class of a block of `layout`, or None when the cache does not take such blocks.
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size();
    (layout.align() <= MAX_ALIGN && (MIN_BYTES..=MAX_BYTES).contains(&size)).then(|| size.next_multiple_of(PAGE))
}

/// Freed blocks by size class, newest last. Pure bookkeeping: it never frees or allocates.
/// Blocks are held as addresses whose provenance was exposed (`expose_provenance`) when the
/// block came in and is taken back (`with_exposed_provenance_mut`) when it goes out.
pub(crate) struct BlockCache {
    blocks: [(usize, usize); SLOTS],
    len: usize,
    bytes: usize,
}

impl BlockCache {
    pub(crate) const fn new() -> Self {
        BlockCache { blocks: [(0, 0); SLOTS], len: 0, bytes: 0 }
    }

    /// The newest cached block of `class` bytes, removed from the cache.
    pub(crate) fn take(&mut self, class: usize) -> Option<usize> {
        let i = (0..self.len).rev().find(|&i| self.blocks[i].1 == class)?;
        let (addr, _) = self.blocks[i];
        self.blocks.copy_within(i + 1..self.len, i);
        self.len -= 1;
        self.bytes -= class;
        Some(addr)
    }

    /// Keeps the block at `addr` of `class` bytes; `evict` receives each older block that no
    /// longer fits (oldest first).
    pub(crate) fn put(&mut self, addr: usize, class: usize, mut evict: impl FnMut(usize, usize)) {
        while self.len > 0 && (self.len == SLOTS || self.bytes + class > CAPACITY_BYTES) {
            let (old, old_class) = self.blocks[0];
            self.blocks.copy_within(1..self.len, 0);
            self.len -= 1;
            self.bytes -= old_class;
            evict(old, old_class);
        }
        self.blocks[self.len] = (addr, class);
        self.len += 1;
        self.bytes += class;
    }

    /// Removes every block; `evict` receives each.
    pub(crate) fn clear(&mut self, mut evict: impl FnMut(usize, usize)) {
        for &(addr, class) in &self.blocks[..self.len] {
            evict(addr, class);
        }
        self.len = 0;
        self.bytes = 0;
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Returns the block at `addr` (exposed provenance) of `class` bytes to the system.
///
/// # Safety
/// The block came from `CachingAllocator::alloc_class` with this class, and is freed once.
unsafe fn free_block(addr: usize, class: usize) {
    // SAFETY: `alloc_class` allocated it from `System` with exactly this layout.
    unsafe { System.dealloc(std::ptr::with_exposed_provenance_mut::<u8>(addr), Layout::from_size_align_unchecked(class, MAX_ALIGN)) }
}

/// The system allocator with a `BlockCache` in front of it for blocks in the cached range.
pub(crate) struct CachingAllocator {
    cache: Mutex<BlockCache>,
}

impl CachingAllocator {
    pub(crate) const fn new() -> Self {
        CachingAllocator { cache: Mutex::new(BlockCache::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BlockCache> {
        // The lock is never held across a panic point, but a poisoned cache is still consistent.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cache, unless another thread holds it. Allocations never wait for the lock: one
    /// that finds it taken goes to the system (so the allocator also serves while the lock is
    /// held across a fork, see `CacheLock`).
    fn try_lock(&self) -> Option<std::sync::MutexGuard<'_, BlockCache>> {
        match self.cache.try_lock() {
            Ok(cache) => Some(cache),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Frees every cached block.
    pub(crate) fn release(&self) {
        // SAFETY: every cached block came from `alloc_class`.
        self.lock().clear(|addr, class| unsafe { free_block(addr, class) });
    }

    /// Bytes the cache holds.
    pub(crate) fn cached_bytes(&self) -> usize {
        self.lock().bytes()
    }

    /// A block of `class` bytes: a cached one, or a new one from the system (zeroed when
    /// `zeroed`, in which case a cached one is cleared here).
    unsafe fn alloc_class(&self, class: usize, zeroed: bool) -> *mut u8 {
        if let Some(addr) = self.try_lock().and_then(|mut cache| cache.take(class)) {
            let ptr = std::ptr::with_exposed_provenance_mut::<u8>(addr);
            if zeroed {
                // SAFETY: the cached block is `class` bytes, owned by the cache until now.
                unsafe { ptr.write_bytes(0, class) };
            }
            return ptr;
        }
        // SAFETY: `class` is non-zero and MAX_ALIGN a power of two.
        let layout = unsafe { Layout::from_size_align_unchecked(class, MAX_ALIGN) };
        // SAFETY: a non-zero-size layout.
        unsafe {
            if zeroed {
                System.alloc_zeroed(layout)
            } else {
                System.alloc(layout)
            }
        }
    }
}

/// The extension's cache, held across forks (see `crate::fork`): `release` and `cached_bytes`
/// wait for its lock, which a child forked while another thread held it would never get.
#[cfg(feature = "python")]
pub(crate) struct CacheLock;

#[cfg(feature = "python")]
impl crate::fork::ForkLock for CacheLock {
    fn hold() -> Box<dyn std::any::Any> {
        Box::new(crate::ALLOCATOR.lock())
    }
}

// SAFETY: blocks in the cached range are always allocated and freed with their class's layout
// (a superset of the caller's: larger size, alignment MAX_ALIGN >= the caller's), and a cached
// block is handed to one caller at a time (under the lock); everything else is `System`'s.
unsafe impl GlobalAlloc for CachingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            // SAFETY: as for the impl.
            Some(class) => unsafe { self.alloc_class(class, false) },
            // SAFETY: the caller's contract, passed on.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            // SAFETY: as for the impl.
            Some(class) => unsafe { self.alloc_class(class, true) },
            // SAFETY: the caller's contract, passed on.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(layout) {
            Some(class) => {
                // SAFETY: a block of this class came from `alloc_class`, as did every block the
                // cache evicts.
                let free = |addr: usize, class: usize| unsafe { free_block(addr, class) };
                match self.try_lock() {
                    Some(mut cache) => cache.put(ptr.expose_provenance(), class, free),
                    None => free(ptr.expose_provenance(), class),
                }
            }
            // SAFETY: the caller's contract, passed on.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract: `layout.align()` is a power of two and `new_size`,
        // rounded up to it, does not overflow isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if class_of(layout).is_none() && class_of(new_layout).is_none() {
            // SAFETY: neither size is the cache's: the block is System's, as the new one will be.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: a new block, the bytes both hold copied, the old one freed (as the default
        // `realloc` does, through this allocator's own methods).
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_only_the_mid_range() {
        let class = |size, align| class_of(Layout::from_size_align(size, align).unwrap());
        assert_eq!(class(MIN_BYTES - 1, 4), None);
        assert_eq!(class(MIN_BYTES, 4), Some(MIN_BYTES));
        assert_eq!(class(MIN_BYTES + 1, 8), Some(MIN_BYTES + PAGE));
        assert_eq!(class(MAX_BYTES, 4), Some(MAX_BYTES));
        assert_eq!(class(MAX_BYTES + 1, 4), None);
        assert_eq!(class(MIN_BYTES, 64), None);
    }

    #[test]
    fn cache_returns_newest_of_a_class_and_evicts_oldest() {
        let mut cache = BlockCache::new();
        let mut evicted = Vec::new();
        let (a, b) = (MIN_BYTES, 2 * MIN_BYTES);
        cache.put(0x1000, a, |p, c| evicted.push((p, c)));
        cache.put(0x2000, b, |p, c| evicted.push((p, c)));
        cache.put(0x3000, a, |p, c| evicted.push((p, c)));
        assert_eq!(cache.bytes(), 2 * a + b);
        assert_eq!(cache.take(a), Some(0x3000));
        assert_eq!(cache.take(a), Some(0x1000));
        assert_eq!(cache.take(a), None);
        assert_eq!(cache.bytes(), b);
        // Filling past the byte capacity evicts from the oldest end.
        let big = MAX_BYTES;
        for i in 0..CAPACITY_BYTES / big {
            cache.put(0x10_0000 * (i + 1), big, |p, c| evicted.push((p, c)));
        }
        assert_eq!(evicted, vec![(0x2000, b)]);
        assert_eq!(cache.bytes(), CAPACITY_BYTES);
        // Filling every slot evicts too.
        cache.clear(|_, _| {});
        evicted.clear();
        for i in 0..SLOTS + 2 {
            cache.put(i + 1, MIN_BYTES, |p, c| evicted.push((p, c)));
        }
        assert_eq!(evicted, vec![(1, MIN_BYTES), (2, MIN_BYTES)]);
        let mut cleared = 0;
        cache.clear(|_, _| cleared += 1);
        assert_eq!((cleared, cache.bytes()), (SLOTS, 0));
    }

    #[test]
    fn allocator_reuses_blocks_and_zeroes_them() {
        let alloc = CachingAllocator::new();
        let layout = Layout::from_size_align(300_000, 4).unwrap();
        // SAFETY: every block is used within its layout and freed once with it.
        unsafe {
            let p = alloc.alloc(layout);
            assert!(!p.is_null());
            p.write_bytes(7, layout.size());
            alloc.dealloc(p, layout);
            assert_eq!(alloc.cached_bytes(), 300_000usize.next_multiple_of(PAGE));
            let q = alloc.alloc_zeroed(layout);
            assert_eq!(q, p);
            assert!(std::slice::from_raw_parts(q, layout.size()).iter().all(|&b| b == 0));
            // Growing out of the class copies into a new block and caches the old one.
            q.write_bytes(3, layout.size());
            let r = alloc.realloc(q, layout, 400_000);
            assert!(std::slice::from_raw_parts(r, layout.size()).iter().all(|&b| b == 3));
            alloc.dealloc(r, Layout::from_size_align(400_000, 4).unwrap());
            // Sizes out of range pass through.
            let small = Layout::from_size_align(100, 4).unwrap();
            let s = alloc.alloc(small);
            alloc.dealloc(s, small);
            assert_eq!(alloc.cached_bytes(), 300_000usize.next_multiple_of(PAGE) + 400_000usize.next_multiple_of(PAGE));
        }
        alloc.release();
        assert_eq!(alloc.cached_bytes(), 0);
    }

    #[test]
    fn a_held_lock_is_bypassed_not_waited_for() {
        let alloc = CachingAllocator::new();
        let layout = Layout::from_size_align(200_000, 8).unwrap();
        let held = alloc.lock();
        // SAFETY: the block is used within its layout and freed once with it.
        unsafe {
            let p = alloc.alloc_zeroed(layout);
            assert!(!p.is_null() && *p == 0);
            alloc.dealloc(p, layout);
        }
        assert_eq!(held.bytes(), 0);
        drop(held);
        assert_eq!(alloc.cached_bytes(), 0);
    }
}
