//! What both binaries' Prometheus metrics share.

use prometheus_client::metrics::counter::Counter;

/// Raises `counter` to `total`, a monotonic count kept elsewhere (an
/// atomic the hot path already increments), when metrics are scraped.
/// Callers scrape one at a time, so read-then-add cannot double count.
pub fn catch_up(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}
