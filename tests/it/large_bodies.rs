//! A response far larger than `max_body_size` streams through: memory stays
//! flat, proven by counting every allocation in this test process.
//!
//! The test runs in a process of its own: the allocator counts the whole process.

use edgecache_testkit as common;

use common::{Origin, client};
use edgecache::CacheMiddleware;
use edgecache::store::MemoryStore;

use edgecache_testkit::counting;

const BODY: usize = 64 * 1024 * 1024;
const LIMIT: usize = 1024 * 1024;

#[tokio::test]
async fn a_64_mib_body_streams_through_with_flat_memory_and_is_not_stored() {
    // Measures the whole process: alone in one.
    if edgecache_testkit::in_own_process(
        module_path!(),
        "a_64_mib_body_streams_through_with_flat_memory_and_is_not_stored",
    ) {
        return;
    }
    let origin = Origin::start().await;
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::default())
        .max_body_size(LIMIT)
        .build()
        .expect("cache");
    let client = client(&cache);
    let url = origin.url(&format!("/large/{BODY}"));

    let baseline = counting::live();
    counting::reset_peak();
    let mut response = client.get(&url).send().await.expect("request");
    assert_eq!(response.headers()["x-cache"], "MISS");
    let mut received = 0;
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        assert!(chunk.iter().all(|byte| *byte == b'x'));
        received += chunk.len();
    }
    let peak_growth = counting::peak() - baseline;

    assert_eq!(received, BODY, "every byte arrives");
    // Buffering would need 64 MiB; streaming needs the limit plus transport buffers.
    assert!(peak_growth < 8 * 1024 * 1024, "peak grew by {} KiB", peak_growth / 1024);
    assert_eq!(cache.len().await.expect("len"), 0, "nothing over the limit is stored");
}
