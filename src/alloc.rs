//! The binary's global allocator: glibc's malloc, or mimalloc for a
//! long-running server.
//!
//! Measured (BENCHMARKS.md, "Re-measured 2026-12-06"): mimalloc serves
//! `wasmlet serve` about a fifth more requests per second and takes 15% of
//! the instructions off an invocation, but as the allocator of a whole
//! process it makes every start slower (0.1-0.5 ms of CPU, about 110 more
//! page faults). A one-shot command, a sandbox worker or a compile child
//! pays a start for one invocation; a server pays it once. So the process
//! starts on glibc's malloc, and [`use_mimalloc`] (called first thing by
//! `serve`) sends every later allocation to mimalloc. Each block is freed
//! by the allocator that made it: mimalloc tells its own blocks apart with
//! `mi_is_in_heap_region`, as its own `mi_cfree` does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// New allocations go to mimalloc. Set once, never cleared.
static MIMALLOC: AtomicBool = AtomicBool::new(false);

/// Sends every allocation from now on to mimalloc.
pub fn use_mimalloc() {
    MIMALLOC.store(true, Ordering::Release);
}

/// glibc's malloc until [`use_mimalloc`], then mimalloc.
pub struct Switching;

/// Every mimalloc block is aligned to a word at least (its size classes
/// are whole words), so a layout asking no more takes mimalloc's plain
/// entry points: `mi_malloc_aligned`, which the `mimalloc` crate calls for
/// every layout, checks the alignment on each call and falls to its
/// generic path for blocks past 1 KiB (measured: about 20 instructions an
/// allocation, 3k a `serve` request).
const WORD: usize = std::mem::size_of::<usize>();

/// Whether `ptr` is a block of mimalloc's: only possible once the switch
/// was made. A thread freeing a block of mimalloc's got it, through some
/// synchronisation, from the thread that allocated it after seeing the
/// flag set, so its Acquire load sees the flag set too.
fn from_mimalloc(ptr: *mut u8) -> bool {
    // SAFETY: mi_is_in_heap_region only looks the address up in
    // mimalloc's own segment map; any address may be passed.
    MIMALLOC.load(Ordering::Acquire) && unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast()) }
}

// SAFETY: every block is allocated by exactly one of two correct
// allocators and freed or resized by the same one (`from_mimalloc`);
// layouts are passed through unchanged.
unsafe impl GlobalAlloc for Switching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MIMALLOC.load(Ordering::Acquire) {
            if layout.align() <= WORD {
                // SAFETY: mi_malloc returns a word-aligned block of at
                // least `size` bytes (or null), which is all `layout` asks.
                return unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() };
            }
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        } else {
            // SAFETY: as above.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if MIMALLOC.load(Ordering::Acquire) {
            if layout.align() <= WORD {
                // SAFETY: as in `alloc`, zeroed.
                return unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() };
            }
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        } else {
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if from_mimalloc(ptr) {
            // SAFETY: mimalloc made this block, with this layout.
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        } else {
            // SAFETY: glibc made this block, with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if from_mimalloc(ptr) {
            if layout.align() <= WORD {
                // SAFETY: mimalloc made this block; mi_realloc keeps (at
                // least) word alignment, all `layout` asks.
                return unsafe { libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast() };
            }
            // SAFETY: mimalloc made this block, with this layout.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        } else {
            // SAFETY: glibc made this block (it stays glibc's).
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}
