//! Fast Purge against a local stand-in (`edgecache_testkit::stand_ins::akamai`) that
//! verifies every EdgeGrid signature, enforces the body limit and the token
//! buckets, answers some requests with 503 and drops some connections.

use edgecache_testkit as common;
use edgecache_testkit::stand_ins::akamai as stand_in;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use edgecache_purge::akamai::{Action, Network, ObjectKind, PurgeError};
use edgecache_purge::{Objects, Purger, Status};
use stand_in::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_urls_are_all_purged_within_the_limits() {
    let (state, client) = start().await;
    let urls: Vec<String> = (0..20_000)
        .map(|index| format!("https://www.example.com/assets/{index}/image-{index}.png?v=2"))
        .collect();
    let started = Instant::now();
    let report = client.purge_urls(urls.clone()).await.expect("valid objects");
    let elapsed = started.elapsed();

    assert!(report.is_success(), "{:?}", report.failed().next());
    assert_eq!(report.accepted(), 20_000);
    let accepted: HashSet<String> = state
        .accepted
        .lock()
        .expect("accepted")
        .iter()
        .map(|object| object.as_str().expect("URLs are strings").to_owned())
        .collect();
    assert_eq!(
        accepted,
        urls.into_iter().collect::<HashSet<_>>(),
        "every object accounted for"
    );
    assert!(state.largest_body.load(Ordering::SeqCst) < 50_000);
    assert_eq!(state.too_large.load(Ordering::SeqCst), 0, "no 413");
    assert_eq!(
        state.throttled.load(Ordering::SeqCst),
        0,
        "the client kept to the buckets"
    );
    assert_eq!(state.unsigned.load(Ordering::SeqCst), 0, "every request was signed");
    assert!(
        report.batches.iter().any(|batch| batch.outcome.as_ref().is_ok()),
        "some accepted"
    );
    assert_eq!(
        *state.paths.lock().expect("paths"),
        HashSet::from(["/ccu/v3/invalidate/url/production".to_owned()])
    );
    let requests = state.seen.load(Ordering::SeqCst);
    assert!(
        requests > report.batches.len(),
        "some requests were 503s and retried ({requests} sent)"
    );
    assert!(
        state.dropped.load(Ordering::SeqCst) > 0,
        "some connections were dropped, and retried"
    );
    // The stand-in allows a 10,000 burst then 12,000/s; the client asks for half that rate.
    eprintln!(
        "purged 20,000 URLs in {:.2?} = {:.0} objects/s over {} requests ({} batches)",
        elapsed,
        20_000.0 / elapsed.as_secs_f64(),
        requests,
        report.batches.len()
    );
    report.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_reported_with_its_detail_and_not_retried() {
    let (state, client) = start().await;
    let client = client.action(Action::Invalidate).network(Network::Staging);
    let report = client
        .purge_urls(["https://www.example.com/ok", "https://bad.example/"])
        .await
        .expect("valid");
    assert!(!report.is_success());
    let failed: Vec<_> = report.failed().collect();
    assert_eq!(failed.len(), 2, "both objects of the refused request are reported");
    let failure = failed[0].1;
    assert_eq!(failure.status, Some(400));
    assert!(
        failure.detail.contains("Invalid URL contained in the request body"),
        "{}",
        failure.detail
    );
    assert_eq!(failure.support_id.as_deref(), Some("17PY1"));
    assert_eq!(failure.attempts, 1, "a 400 is not retried");
    assert!(
        state
            .paths
            .lock()
            .expect("paths")
            .contains("/ccu/v3/invalidate/url/staging")
    );
}

#[tokio::test]
async fn invalid_objects_are_refused_before_anything_is_sent() {
    let (state, client) = start().await;
    let error = client
        .purge_urls(["https://www.example.com/", "ftp://x/", "not a url"])
        .await
        .expect_err("invalid");
    let PurgeError::Invalid(invalid) = error;
    assert_eq!(invalid.iter().map(|object| object.index).collect::<Vec<_>>(), [1, 2]);
    let error = client
        .purge(ObjectKind::CpCode, vec!["12345".into(), "12x".into()])
        .await
        .expect_err("not numbers");
    assert!(error.to_string().contains("\"12x\": not a CP code"), "{error}");
    assert_eq!(state.seen.load(Ordering::SeqCst), 0, "nothing was sent");
}

#[tokio::test]
async fn cp_codes_go_as_json_numbers_and_one_purger_also_purges_the_local_cache() {
    let (state, client) = start().await;
    let report = client.purge_cpcodes([12345, 67890]).await.expect("valid");
    assert!(report.is_success());
    let accepted = state.accepted.lock().expect("accepted").clone();
    assert_eq!(accepted, [serde_json::json!(12345), serde_json::json!(67890)]);

    let origin = common::Origin::start().await;
    let cache = edgecache::CacheMiddleware::builder()
        .store(edgecache::store::MemoryStore::default())
        .build()
        .expect("cache");
    let url = origin.url("/max-age/60");
    common::get(&common::client(&cache), &url).await;
    assert!(cache.contains_url(&url).await.expect("contains"));
    let purger = Purger::builder().target(cache.clone()).target(client).build();
    let report = purger.purge(Objects::urls([url.clone()])).await.expect("valid");
    assert!(report.is_success(), "{:?}", report.unsuccessful().collect::<Vec<_>>());
    assert_eq!(
        report.target("akamai").expect("akamai").objects[0].outcome.status,
        Status::Accepted
    );
    assert_eq!(
        report.target("cache").expect("cache").objects[0].outcome.detail,
        "1 entry deleted"
    );
    assert!(
        !cache.contains_url(&url).await.expect("contains"),
        "purged from the local cache too"
    );
    // A CP code is Akamai's: the cache skips it, and says why.
    let report = purger
        .purge(Objects::new(ObjectKind::CpCode, ["12345"]))
        .await
        .expect("valid");
    let skipped = &report.target("cache").expect("cache").objects[0];
    assert_eq!(skipped.outcome.status, Status::Skipped);
    assert!(skipped.outcome.detail.contains("Akamai"), "{}", skipped.outcome.detail);
    assert!(report.is_success(), "a skip is no failure");
}

/// Akamai refuses a whole request (up to 5,000 tags) for one tag with a
/// character outside its set, with a `400` no retry changes: such a tag is
/// refused before anything is sent, naming the line and the character.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_akamai_refuses_is_refused_before_sending_with_its_line_and_character() {
    let (state, client) = start().await;
    let purger = Purger::builder().target(client).build();
    let result = purger.purge(Objects::tags(["product-41", "product:42"])).await;
    let Err(edgecache_purge::PurgeRunError::Invalid(invalid)) = result else {
        panic!("refused before sending: {result:?}");
    };
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0].index, 1);
    assert_eq!(
        invalid[0].reason,
        "akamai: `:` (character 8) is not allowed in an Akamai cache tag: only letters, digits and !#$%'+./^_`|~-"
    );
    let long = "t".repeat(129);
    assert!(
        purger.purge(Objects::tags([long])).await.is_err(),
        "over 128 characters"
    );
    assert_eq!(state.seen.load(Ordering::SeqCst), 0, "nothing was sent");
    // What Akamai takes goes through, every allowed character included.
    let report = purger
        .purge(Objects::tags(["product-42", "a!#$%'+./^_`|~-Z9"]))
        .await
        .expect("valid");
    assert!(report.is_success(), "{:?}", report.unsuccessful().next());
}

/// A refused (`429`) request is retried when Akamai's headers say the
/// tokens are back: `X-RateLimit-Seconds-To-Refresh-Limit` in fractional
/// seconds, or the missing objects at the `-Objects` refill rate. The
/// stand-in refuses every retry that comes earlier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_is_retried_after_the_wait_akamai_names() {
    let cases = [
        (
            vec![
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-seconds-to-refresh-limit", "1.5".to_owned()),
            ],
            std::time::Duration::from_millis(1_500),
        ),
        (
            vec![
                ("x-ratelimit-remaining-objects", "0".to_owned()),
                ("x-ratelimit-limit-per-second-objects", "2.00".to_owned()),
                ("x-ratelimit-limit-objects", "5000".to_owned()),
            ],
            std::time::Duration::from_millis(500),
        ),
    ];
    for (headers, wait) in cases {
        let (state, client) = start().await;
        *state.hold.lock().expect("hold") = Some(stand_in::Hold {
            headers: headers.clone(),
            wait,
            until: None,
        });
        let started = Instant::now();
        let report = client.purge_tags(["product-42"]).await.expect("valid");
        assert!(report.is_success(), "{headers:?}: {:?}", report.failed().next());
        assert_eq!(
            state.held.load(Ordering::SeqCst),
            1,
            "{headers:?}: one refusal, then a retry after the named wait"
        );
        assert!(started.elapsed() >= wait);
    }
}
