//! A cache of freed small blocks in front of the component's allocator.
//!
//! One `gateway.decide` allocates and frees 20 to 60 small blocks: every
//! string the host passes in (one `cabi_realloc` each), the headers of the
//! forward plan, the key record. Counted with callgrind, talc spent about
//! 350 instructions on each allocation and its release, about a quarter of
//! a decide's instructions. A freed block of a common size is almost
//! always wanted again within the same call, so this keeps freed blocks of
//! up to [`LARGEST`] bytes on a free list per size class and hands them out
//! again in a few instructions. Everything else, and every block the lists
//! are too full to keep, goes to the inner allocator.
//!
//! A block's class follows from its `Layout` alone, which Rust passes
//! unchanged to `dealloc`, so a block always returns to the path it came
//! from. Not thread-safe: it is `Sync`, and so a global allocator, only on
//! single-threaded WebAssembly.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;

/// Class sizes are multiples of this many bytes.
const GRANULE: usize = 16;
/// The largest block the classes serve; larger ones go to the inner
/// allocator directly.
pub const LARGEST: usize = 256;
/// Blocks the classes serve are aligned to this, which covers every type
/// but over-aligned ones (these go to the inner allocator).
const ALIGN: usize = 8;
const CLASSES: usize = LARGEST / GRANULE;
/// Freed blocks kept per class. Beyond it they go back to the inner
/// allocator, so the cache holds at most about 140 KiB.
pub const KEPT_PER_CLASS: u32 = 64;

/// The freed blocks of one class, linked through their first word.
#[derive(Clone, Copy)]
struct FreeList {
    head: *mut u8,
    len: u32,
}

const EMPTY: FreeList = FreeList {
    head: ptr::null_mut(),
    len: 0,
};

/// `inner` with a cache of freed small blocks in front of it.
pub struct SmallBlocks<A> {
    inner: A,
    free: UnsafeCell<[FreeList; CLASSES]>,
}

impl<A> SmallBlocks<A> {
    pub const fn new(inner: A) -> Self {
        SmallBlocks {
            inner,
            free: UnsafeCell::new([EMPTY; CLASSES]),
        }
    }
}

// SAFETY: WebAssembly without the atomics feature has one thread, so the
// lists are never shared across threads; talc's own cell assumes the same.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<A: Sync> Sync for SmallBlocks<A> {}

/// The class serving `layout`, if any: sizes 1-16 are class 0, 17-32
/// class 1, and so on.
#[inline]
fn class(size: usize, align: usize) -> Option<usize> {
    if size <= LARGEST && align <= ALIGN {
        Some(size.saturating_sub(1) / GRANULE)
    } else {
        None
    }
}

/// The layout of every block of `class`, as the inner allocator sees it.
#[inline]
fn block(class: usize) -> Layout {
    // SAFETY: the size is at most LARGEST and ALIGN is a power of two.
    unsafe { Layout::from_size_align_unchecked((class + 1) * GRANULE, ALIGN) }
}

// SAFETY: every block handed out is either the inner allocator's block for
// `layout` or a block of `layout`'s class, which is at least as large and
// as aligned as `layout` asks; `dealloc` and `realloc` find the same class
// from the same layout, so each block goes back where it came from.
unsafe impl<A: GlobalAlloc> GlobalAlloc for SmallBlocks<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class(layout.size(), layout.align()) else {
            // SAFETY: forwarded unchanged.
            return unsafe { self.inner.alloc(layout) };
        };
        // SAFETY: single-threaded (see the module docs), and no reference
        // into the lists outlives this call.
        let list = unsafe { &mut (*self.free.get())[class] };
        if list.head.is_null() {
            // SAFETY: a valid, non-zero-size layout.
            return unsafe { self.inner.alloc(block(class)) };
        }
        let taken = list.head;
        // SAFETY: a listed block is free, at least GRANULE bytes and
        // aligned for a pointer; its first word links to the next.
        list.head = unsafe { taken.cast::<*mut u8>().read() };
        list.len -= 1;
        taken
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class(layout.size(), layout.align()) else {
            // SAFETY: this block came from the inner allocator with `layout`.
            return unsafe { self.inner.dealloc(ptr, layout) };
        };
        // SAFETY: as in `alloc`.
        let list = unsafe { &mut (*self.free.get())[class] };
        if list.len >= KEPT_PER_CLASS {
            // SAFETY: blocks of a class come from the inner allocator with
            // the class's layout.
            return unsafe { self.inner.dealloc(ptr, block(class)) };
        }
        // SAFETY: the block is ours again, at least GRANULE bytes and
        // aligned for a pointer.
        unsafe { ptr.cast::<*mut u8>().write(list.head) };
        list.head = ptr;
        list.len += 1;
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let from = class(layout.size(), layout.align());
        let to = class(new_size, layout.align());
        match (from, to) {
            // The block already has room for the new size.
            (Some(a), Some(b)) if a == b => ptr,
            // SAFETY: the inner allocator's own block, resized by it.
            (None, None) => unsafe { self.inner.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY: `realloc`'s contract makes this a valid layout.
                let new_layout =
                    unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // SAFETY: a valid, non-zero-size layout.
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks hold at least the smaller size and
                    // are distinct; the old one is ours to free.
                    unsafe {
                        ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::alloc::System;
    use std::cell::Cell;

    /// System's allocator, counting the calls that reach it.
    #[derive(Default)]
    struct Counted {
        allocs: Cell<usize>,
        deallocs: Cell<usize>,
    }

    unsafe impl GlobalAlloc for Counted {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.allocs.set(self.allocs.get() + 1);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            self.deallocs.set(self.deallocs.get() + 1);
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    /// Frees every cached block, so System sees every block it lent back.
    fn drain(cache: &SmallBlocks<Counted>) {
        for class in 0..CLASSES {
            loop {
                let list = unsafe { &mut (*cache.free.get())[class] };
                if list.head.is_null() {
                    break;
                }
                let p = unsafe { cache.alloc(block(class)) };
                unsafe { cache.inner.dealloc(p, block(class)) };
            }
        }
    }

    #[test]
    fn a_freed_small_block_is_handed_out_again_without_the_inner_allocator() {
        let cache = SmallBlocks::new(Counted::default());
        let l = layout(24, 8);
        let a = unsafe { cache.alloc(l) };
        unsafe { cache.dealloc(a, l) };
        // Another size of the same class (17-32 bytes) gets the same block.
        let b = unsafe { cache.alloc(layout(32, 4)) };
        assert_eq!(a, b);
        assert_eq!(cache.inner.allocs.get(), 1);
        assert_eq!(cache.inner.deallocs.get(), 0);
        unsafe { cache.dealloc(b, layout(32, 4)) };
        drain(&cache);
        assert_eq!(cache.inner.allocs.get(), cache.inner.deallocs.get());
    }

    #[test]
    fn large_and_over_aligned_blocks_go_straight_to_the_inner_allocator() {
        let cache = SmallBlocks::new(Counted::default());
        for l in [layout(LARGEST + 1, 8), layout(16, 16), layout(4096, 8)] {
            let p = unsafe { cache.alloc(l) };
            assert_eq!(p as usize % l.align(), 0);
            unsafe { cache.dealloc(p, l) };
        }
        assert_eq!(cache.inner.allocs.get(), 3);
        assert_eq!(cache.inner.deallocs.get(), 3);
    }

    #[test]
    fn each_class_keeps_a_bounded_number_of_freed_blocks() {
        let cache = SmallBlocks::new(Counted::default());
        let l = layout(100, 8);
        let blocks: Vec<*mut u8> = (0..KEPT_PER_CLASS + 10)
            .map(|_| unsafe { cache.alloc(l) })
            .collect();
        for p in blocks {
            unsafe { cache.dealloc(p, l) };
        }
        // The ten beyond the bound went back at once.
        assert_eq!(cache.inner.deallocs.get(), 10);
        drain(&cache);
        assert_eq!(cache.inner.allocs.get(), cache.inner.deallocs.get());
    }

    #[test]
    fn growing_within_a_class_keeps_the_block_and_across_classes_moves_it() {
        let cache = SmallBlocks::new(Counted::default());
        let l = layout(20, 1);
        let p = unsafe { cache.alloc(l) };
        unsafe { p.write_bytes(7, 20) };
        let same = unsafe { cache.realloc(p, l, 32) };
        assert_eq!(same, p);
        let moved = unsafe { cache.realloc(same, layout(32, 1), 1000) };
        assert_ne!(moved, p);
        assert!((0..20).all(|i| unsafe { *moved.add(i) } == 7));
        let back = unsafe { cache.realloc(moved, layout(1000, 1), 10) };
        assert!((0..10).all(|i| unsafe { *back.add(i) } == 7));
        unsafe { cache.dealloc(back, layout(10, 1)) };
        drain(&cache);
        assert_eq!(cache.inner.allocs.get(), cache.inner.deallocs.get());
    }

    /// Whether the first `len` bytes at `p` are all `byte`.
    fn filled(p: *mut u8, len: usize, byte: u8) -> bool {
        (0..len).all(|j| unsafe { *p.add(j) } == byte)
    }

    #[derive(Clone, Debug)]
    enum Step {
        Alloc(usize, usize),
        Free(usize),
        Grow(usize, usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1usize..600, 0u32..5).prop_map(|(size, a)| Step::Alloc(size, 1 << a)),
            any::<usize>().prop_map(Step::Free),
            (any::<usize>(), 1usize..600).prop_map(|(i, size)| Step::Grow(i, size)),
        ]
    }

    proptest! {
        /// Live blocks are aligned, never overlap, keep their contents, and
        /// everything lent by the inner allocator is returned once drained.
        #[test]
        fn blocks_stay_aligned_disjoint_and_intact(steps in prop::collection::vec(step(), 1..300)) {
            let cache = SmallBlocks::new(Counted::default());
            // (pointer, layout, fill byte)
            let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
            for (n, s) in steps.into_iter().enumerate() {
                let fill = n as u8;
                match s {
                    Step::Alloc(size, align) => {
                        let l = layout(size, align);
                        let p = unsafe { cache.alloc(l) };
                        prop_assert!(!p.is_null());
                        prop_assert_eq!(p as usize % align, 0);
                        unsafe { p.write_bytes(fill, size) };
                        live.push((p, l, fill));
                    }
                    Step::Free(i) if !live.is_empty() => {
                        let (p, l, _) = live.swap_remove(i % live.len());
                        unsafe { cache.dealloc(p, l) };
                    }
                    Step::Grow(i, size) if !live.is_empty() => {
                        let i = i % live.len();
                        let (p, l, old) = live[i];
                        let q = unsafe { cache.realloc(p, l, size) };
                        prop_assert!(!q.is_null());
                        let kept = l.size().min(size);
                        prop_assert!(filled(q, kept, old), "contents lost in realloc");
                        unsafe { q.write_bytes(fill, size) };
                        live[i] = (q, layout(size, l.align()), fill);
                    }
                    _ => {}
                }
                for &(p, l, f) in &live {
                    prop_assert!(filled(p, l.size(), f), "a live block was overwritten");
                }
                let mut spans: Vec<(usize, usize)> =
                    live.iter().map(|&(p, l, _)| (p as usize, p as usize + l.size())).collect();
                spans.sort_unstable();
                prop_assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
            }
            for (p, l, _) in live {
                unsafe { cache.dealloc(p, l) };
            }
            drain(&cache);
            prop_assert_eq!(cache.inner.allocs.get(), cache.inner.deallocs.get());
        }
    }
}
