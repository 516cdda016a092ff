//! Decoded-frame buffers shared by every tap's video decoder.
//!
//! Why: a decoder's own buffer pool keeps the frame buffers it ever used, so every tapped
//! participant held one decoded frame (115 KB at 320x240, 460 KB at 640x480) between frames,
//! although a frame lives only while the receive thread takes it (decode → probe → drop, on one
//! thread). Here each decoder still gets a pool object of its own (GStreamer's pool activation
//! and configuration stay per decoder), but a released buffer goes to one process-wide shelf
//! and the next decoder that needs a buffer of the same kind takes it from there. The buffers
//! in use are then as many as the threads decoding at once, not as many as the participants.
//!
//! The shelf ([`Shelf`]) is the pure core: bounded, keyed by what makes two buffers
//! interchangeable (size and allocation parameters), least recently shelved evicted first. The
//! GStreamer side ([`SharedFramePool`]) is a thin `GstBufferPool` subclass around it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer::subclass::prelude::*;

/// Idle frame buffers kept for the whole process. A frame is in use only while a receive thread
/// works on it, so a few cover the shared receive threads; with rtpbin per tap (one thread per
/// stream) more are in use at once, and what does not fit on the shelf is freed.
pub const SHELF_CAPACITY: usize = 8;

/// A bounded store of idle items by key: `put` keeps at most `capacity` items in all, evicting
/// the one shelved longest ago; `take` returns the most recently shelved item of a key (the one
/// most likely still in a CPU cache).
#[derive(Debug)]
pub struct Shelf<K, T> {
    items: VecDeque<(K, T)>,
    capacity: usize,
}

impl<K: PartialEq, T> Shelf<K, T> {
    pub const fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::new(),
            capacity,
        }
    }

    /// Shelves an item; returns the item that had to leave to make room (or the item itself when
    /// the capacity is zero), for the caller to free outside any lock.
    pub fn put(&mut self, key: K, item: T) -> Option<T> {
        if self.capacity == 0 {
            return Some(item);
        }
        let evicted = if self.items.len() >= self.capacity {
            self.items.pop_front().map(|(_, t)| t)
        } else {
            None
        };
        self.items.push_back((key, item));
        evicted
    }

    pub fn take(&mut self, key: &K) -> Option<T> {
        let at = self.items.iter().rposition(|(k, _)| k == key)?;
        self.items.remove(at).map(|(_, t)| t)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// What makes two frame buffers interchangeable: a buffer allocated with other alignment, prefix
/// or padding, or by another allocator, is not handed to a pool configured otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BufferKind {
    size: usize,
    align: usize,
    prefix: usize,
    padding: usize,
    allocator: Option<String>,
}

fn shelf() -> &'static Mutex<Shelf<Arc<BufferKind>, gst::Buffer>> {
    static SHELF: OnceLock<Mutex<Shelf<Arc<BufferKind>, gst::Buffer>>> = OnceLock::new();
    SHELF.get_or_init(|| Mutex::new(Shelf::new(SHELF_CAPACITY)))
}

static ALLOCATED: AtomicU64 = AtomicU64::new(0);
static REUSED: AtomicU64 = AtomicU64::new(0);

/// Frame buffers allocated since the process started (each is a decoded frame's worth of heap).
pub fn frames_allocated() -> u64 {
    ALLOCATED.load(Ordering::Relaxed)
}

/// Frame buffers served from the shelf instead of allocated.
pub fn frames_reused() -> u64 {
    REUSED.load(Ordering::Relaxed)
}

/// Idle frame buffers on the shelf now.
pub fn frames_idle() -> usize {
    shelf().lock().unwrap_or_else(|e| e.into_inner()).len()
}

mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use gstreamer as gst;
    use gstreamer::glib;
    use gstreamer::prelude::*;
    use gstreamer::subclass::prelude::*;

    // Named in full: `super` here is this file's module, and the import checker reads `super::`
    // as the parent folder's.
    use crate::media::receiver::frame_pool::{shelf, BufferKind, ALLOCATED, REUSED};

    #[derive(Default)]
    pub struct SharedFramePool {
        // Shared with the shelf's entries: a frame's way through costs no copy of it.
        kind: Mutex<Option<Arc<BufferKind>>>,
        pub(super) allocated: AtomicU64,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for SharedFramePool {
        const NAME: &'static str = "KurentoTapSharedFramePool";
        type Type = crate::media::receiver::frame_pool::SharedFramePool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for SharedFramePool {}
    impl GstObjectImpl for SharedFramePool {}

    impl BufferPoolImpl for SharedFramePool {
        fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
            let Some((caps, size, _min, _max)) = config.params() else {
                return false;
            };
            // No buffers allocated ahead and no upper bound: the shelf holds what is idle, and
            // the base class' own queue stays empty (its stop() then has nothing to wait for).
            config.set_params(caps.as_ref(), size, 0, 0);
            let (allocator, params) = config
                .allocator()
                .unwrap_or((None, gst::AllocationParams::default()));
            *self.kind.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(BufferKind {
                size: size as usize,
                align: params.align(),
                prefix: params.prefix(),
                padding: params.padding(),
                allocator: allocator.map(|a| a.memory_type().to_string()),
            }));
            self.parent_set_config(config)
        }

        fn acquire_buffer(
            &self,
            params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            if !self.obj().is_active() {
                return Err(gst::FlowError::Flushing);
            }
            let kind = self
                .kind
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .ok_or(gst::FlowError::NotNegotiated)?;
            let shelved = shelf()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(&kind);
            if let Some(buffer) = shelved {
                REUSED.fetch_add(1, Ordering::Relaxed);
                return Ok(buffer);
            }
            let mut buffer = self.parent_alloc_buffer(params)?;
            // As the base class does for its own buffers: untagged memory is how a buffer is
            // expected back (a tagged one was changed by someone and is not reused).
            buffer
                .get_mut()
                .ok_or(gst::FlowError::Error)?
                .unset_flags(gst::BufferFlags::TAG_MEMORY);
            ALLOCATED.fetch_add(1, Ordering::Relaxed);
            self.allocated.fetch_add(1, Ordering::Relaxed);
            Ok(buffer)
        }

        fn release_buffer(&self, buffer: gst::Buffer) {
            let kind = self.kind.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let reusable = kind.as_ref().is_some_and(|k| buffer.size() == k.size)
                && !buffer.flags().contains(gst::BufferFlags::TAG_MEMORY)
                && buffer.is_all_memory_writable();
            let evicted = match (kind, reusable) {
                (Some(kind), true) => shelf()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .put(kind, buffer),
                _ => Some(buffer),
            };
            // Freed here, outside the shelf's lock.
            drop(evicted);
        }
    }
}

glib::wrapper! {
    /// A decoder's buffer pool whose idle buffers live on the process-wide shelf.
    pub struct SharedFramePool(ObjectSubclass<imp::SharedFramePool>)
        @extends gst::BufferPool, gst::Object;
}

impl SharedFramePool {
    pub fn new() -> Self {
        glib::Object::new()
    }

    /// Buffers this pool allocated (not taken from the shelf).
    pub fn allocated(&self) -> u64 {
        self.imp().allocated.load(Ordering::Relaxed)
    }
}

impl Default for SharedFramePool {
    fn default() -> Self {
        Self::new()
    }
}

/// Offers a [`SharedFramePool`] to the decoder upstream of `sink_pad` when it asks downstream
/// how to allocate its output (the ALLOCATION query), so that its frames come from the shelf.
pub fn offer_to_decoder(sink_pad: &gst::Pad) {
    sink_pad.add_probe(gst::PadProbeType::QUERY_DOWNSTREAM, |_, info| {
        let Some(query) = info.query_mut() else {
            return gst::PadProbeReturn::Ok;
        };
        let gst::QueryViewMut::Allocation(allocation) = query.view_mut() else {
            return gst::PadProbeReturn::Ok;
        };
        let (Some(caps), _) = allocation.get() else {
            return gst::PadProbeReturn::Ok;
        };
        let Ok(info) = gstreamer_video::VideoInfo::from_caps(caps) else {
            return gst::PadProbeReturn::Ok;
        };
        let Ok(size) = u32::try_from(info.size()) else {
            return gst::PadProbeReturn::Ok;
        };
        allocation.add_allocation_pool(Some(&SharedFramePool::new()), size, 0, 0);
        // Answered: the fakesink behind would say it has no opinion.
        gst::PadProbeReturn::Handled
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shelf_takes_by_key_most_recent_first() {
        let mut shelf = Shelf::new(4);
        assert!(shelf.put(1, "a").is_none());
        assert!(shelf.put(2, "b").is_none());
        assert!(shelf.put(1, "c").is_none());
        assert_eq!(shelf.take(&1), Some("c"));
        assert_eq!(shelf.take(&1), Some("a"));
        assert_eq!(shelf.take(&1), None);
        assert_eq!(shelf.take(&2), Some("b"));
        assert!(shelf.is_empty());
    }

    #[test]
    fn shelf_is_bounded_and_evicts_the_oldest() {
        let mut shelf = Shelf::new(2);
        assert!(shelf.put(1, 10).is_none());
        assert!(shelf.put(2, 20).is_none());
        assert_eq!(shelf.put(3, 30), Some(10));
        assert_eq!(shelf.len(), 2);
        assert_eq!(shelf.take(&1), None);
        let mut none = Shelf::new(0);
        assert_eq!(none.put(1, 1), Some(1));
        assert!(none.is_empty());
    }

    fn configured_pool(size: u32) -> SharedFramePool {
        let pool = SharedFramePool::new();
        let mut config = pool.config();
        config.set_params(None, size, 2, 4);
        pool.set_config(config).expect("config accepted");
        pool.set_active(true).expect("pool active");
        pool
    }

    // Fifty decoders that decode in turn (as on the shared receive threads) allocate one frame
    // between them, not fifty; a frame of another size is not handed out for this one; and
    // pools stop cleanly with their frames still out or on the shelf.
    #[test]
    fn fifty_pools_decoding_in_turn_share_one_frame() {
        gst::init().unwrap();
        // A size no other test in this process uses.
        let size = 115_211;
        let pools: Vec<_> = (0..50).map(|_| configured_pool(size)).collect();
        let allocated =
            |pools: &[SharedFramePool]| pools.iter().map(|p| p.allocated()).sum::<u64>();
        for _round in 0..3 {
            for pool in &pools {
                let mut buffer = pool.acquire_buffer(None).expect("a frame");
                assert_eq!(buffer.size(), size as usize);
                buffer
                    .get_mut()
                    .unwrap()
                    .set_pts(gst::ClockTime::from_mseconds(1));
                drop(buffer);
            }
        }
        assert_eq!(allocated(&pools), 1);

        let other = configured_pool(size + 1);
        let buffer = other.acquire_buffer(None).unwrap();
        assert_eq!(buffer.size(), size as usize + 1);
        assert_eq!(other.allocated(), 1);

        // A frame someone kept a second reference to is still written by nobody else.
        let first = pools[0].acquire_buffer(None).unwrap();
        let second = pools[1].acquire_buffer(None).unwrap();
        assert_ne!(
            first.map_readable().unwrap().as_ptr(),
            second.map_readable().unwrap().as_ptr()
        );
        drop((first, second, buffer));
        assert_eq!(allocated(&pools), 2);
        for pool in pools.iter().chain([&other]) {
            pool.set_active(false).expect("pool stops");
        }
        assert!(frames_idle() <= SHELF_CAPACITY);
    }

    #[test]
    fn an_inactive_pool_gives_no_frame() {
        gst::init().unwrap();
        let pool = SharedFramePool::new();
        let mut config = pool.config();
        config.set_params(None, 1000, 0, 0);
        pool.set_config(config).unwrap();
        assert!(pool.acquire_buffer(None).is_err());
    }
}
