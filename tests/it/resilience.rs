//! Under load and faults: coalescing, stale-if-error, stale-while-revalidate.

use edgecache_testkit as common;

use std::time::Duration;

use common::{Origin, client, get};
use edgecache::store::MemoryStore;
use edgecache::{CacheInfo, CacheMiddleware, CacheStatus};

fn cache() -> edgecache::CacheBuilder {
    CacheMiddleware::builder().store(MemoryStore::default())
}

/// Polls until `done` or a generous deadline; the deadline only turns a
/// hang into a failure, it measures nothing.
async fn eventually(mut done: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..200 {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_misses_make_one_origin_request() {
    let origin = Origin::start().await;
    let client = client(&cache().build().expect("cache"));
    let url = origin.url("/slow/300");
    let requests: Vec<_> = (0..64)
        .map(|_| tokio::spawn(get_owned(client.clone(), url.clone())))
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        let (x_cache, body) = request.await.expect("task");
        assert_eq!(body, "GET /slow/300 #1", "every caller gets the one response");
        statuses.push(x_cache);
    }
    assert_eq!(origin.hits("/slow/300"), 1);
    assert_eq!(
        statuses.iter().filter(|status| *status == "MISS").count(),
        1,
        "one leader: {statuses:?}"
    );
}

async fn get_owned(client: reqwest_middleware::ClientWithMiddleware, url: String) -> (String, String) {
    get(&client, &url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_keys_never_wait_on_each_other() {
    let origin = Origin::start().await;
    let client = client(&cache().build().expect("cache"));
    // Held at the origin until the test opens the gate.
    let held = tokio::spawn(get_owned(client.clone(), origin.url("/gate")));
    assert!(
        eventually(async || origin.hits("/gate") == 1).await,
        "the held request reached the origin"
    );
    // Another key is answered while the first is held: were it queued behind
    // the held key, this would never return and the gate would never open.
    assert_eq!(get(&client, &origin.url("/plain")).await.1, "GET /plain #1");
    assert!(!held.is_finished());
    origin.open_gate();
    assert_eq!(held.await.expect("task").1, "GET /gate #1");
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_entry_on_5xx_and_transport_errors() {
    let mut origin = Origin::start().await;
    let tolerant = client(&cache().stale_if_error(true).build().expect("cache"));
    let strict = client(&cache().build().expect("cache"));
    let url = origin.url("/stale");
    let (first, body) = get(&tolerant, &url).await;
    assert_eq!((first.as_str(), body.as_str()), ("MISS", "GET /stale #1"));
    get(&strict, &url).await;

    origin.fail(true);
    let response = tolerant.get(&url).send().await.expect("request");
    let info = response.extensions().get::<CacheInfo>().cloned().expect("info");
    assert_eq!(
        (
            response.status().as_u16(),
            response.headers()["x-cache"].to_str().expect("ascii")
        ),
        (200, "STALE")
    );
    assert_eq!(response.text().await.expect("body"), "GET /stale #1");
    assert!(info.from_cache && info.is_expired && info.status == CacheStatus::Stale);
    let response = strict.get(&url).send().await.expect("request");
    assert_eq!(
        response.status(),
        500,
        "without stale-if-error the error passes through unchanged"
    );
    assert_eq!(response.text().await.expect("body"), "origin failure");

    origin.stop().await;
    assert_eq!(get(&tolerant, &url).await, ("STALE".into(), "GET /stale #1".into()));
    assert!(
        strict.get(&url).send().await.is_err(),
        "the transport error passes through unchanged"
    );
}

#[tokio::test]
async fn the_stale_if_error_directive_is_honoured_without_the_option() {
    let origin = Origin::start().await;
    let client = client(&cache().build().expect("cache"));
    get(&client, &origin.url("/stale?directive")).await;
    get(&client, &origin.url("/stale")).await;
    origin.fail(true);
    assert_eq!(get(&client, &origin.url("/stale?directive")).await.0, "STALE");
    assert_eq!(
        get(&client, &origin.url("/stale")).await,
        ("MISS".into(), "origin failure".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once_in_the_background() {
    let origin = Origin::start().await;
    let client = client(&cache().stale_while_revalidate(true).build().expect("cache"));
    let url = origin.url("/refreshes-slowly");
    assert_eq!(
        get(&client, &url).await,
        ("MISS".into(), "GET /refreshes-slowly #1".into())
    );

    // Many callers at once on the stale entry: all answered from it, one refresh.
    let callers: Vec<_> = (0..20)
        .map(|_| tokio::spawn(get_owned(client.clone(), url.clone())))
        .collect();
    for caller in callers {
        assert_eq!(
            caller.await.expect("task"),
            ("STALE".into(), "GET /refreshes-slowly #1".into())
        );
    }
    let refreshed = eventually(async || get(&client, &url).await == ("HIT".into(), "GET /refreshes-slowly #2".into()));
    assert!(refreshed.await, "the background refresh stored the new response");
    assert_eq!(origin.hits("/refreshes-slowly"), 2, "one refresh, however many callers");
    let refresh = &origin.seen("/refreshes-slowly")[1];
    assert_eq!(refresh.headers["if-none-match"], "\"r1\"", "the refresh revalidates");
}

#[tokio::test]
async fn without_stale_while_revalidate_a_stale_entry_is_revalidated_first() {
    let origin = Origin::start().await;
    let client = client(&cache().build().expect("cache"));
    let url = origin.url("/refreshes");
    get(&client, &url).await;
    assert_eq!(get(&client, &url).await, ("MISS".into(), "GET /refreshes #2".into()));
}
