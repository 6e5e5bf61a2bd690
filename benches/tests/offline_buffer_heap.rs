//! `Config::max_buffered_bytes` bounds the heap the offline buffer takes, not only the
//! bytes of its messages: filled to the bound on a connection that never connects, the heap
//! (bytes requested from the allocator, counted by a global allocator) has grown by at most
//! the bound, and it stops growing there.
//!
//! One device name, so that what grows is the buffer (with many names, each new sub-device
//! also takes its registry slot, which `max_sub_devices` bounds instead).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gateway_benches::counting::Counting;
use gateway_benches::fill_offline_buffer;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn the_offline_buffer_heap_stays_within_its_configured_bytes() {
    // A single test in this binary: the allocator's counters are process-wide.
    for bound in [256 * 1024, 4 << 20] {
        let fill = fill_offline_buffer(bound, 1, 10_000);
        assert!(fill.accepted > 100, "{fill:?}");
        assert_eq!(fill.refused, 10_001, "{fill:?}");
        assert!(fill.buffered_bytes <= bound, "{fill:?}");
        assert!(
            fill.growth <= bound,
            "the heap grew by {} bytes for a {bound}-byte buffer: {fill:?}",
            fill.growth
        );
        assert_eq!(
            fill.growth_after, fill.growth,
            "refused commands keep nothing"
        );
    }
}
