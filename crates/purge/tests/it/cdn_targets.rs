//! The Cloudflare and Fastly targets against local stand-ins of their APIs
//! (`edgecache_testkit::stand_ins::{cloudflare, fastly}`): every object kind,
//! the limits, soft purges and refusals.

use edgecache_testkit::stand_ins::cloudflare as cloudflare_stand_in;
use edgecache_testkit::stand_ins::fastly as fastly_stand_in;

use std::sync::atomic::Ordering;
use std::time::Duration;

use edgecache_purge::cloudflare::{CloudflarePurge, Plan};
use edgecache_purge::fastly::FastlyPurge;
use edgecache_purge::{Backoff, ObjectKind, Objects, Purger, Status};

fn quick() -> Backoff {
    Backoff {
        base: Duration::from_millis(10),
        cap: Duration::from_millis(100),
    }
}

fn cloudflare(stand_in: &cloudflare_stand_in::StandIn, token: &str) -> CloudflarePurge {
    CloudflarePurge::new(cloudflare_stand_in::ZONE, token)
        .expect("client")
        .plan(Plan::Pro)
        .api_base(stand_in.api_base())
        .backoff(quick())
}

fn fastly(stand_in: &fastly_stand_in::StandIn, token: &str) -> FastlyPurge {
    FastlyPurge::new(fastly_stand_in::SERVICE, token)
        .expect("client")
        .api_base(stand_in.api_base())
        .backoff(quick())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_thousand_urls_to_cloudflare_on_the_pro_plan_stay_inside_its_bucket() {
    let stand_in = cloudflare_stand_in::StandIn::start().await;
    let urls: Vec<String> = (0..4_000)
        .map(|n| format!("https://www.example.com/assets/{n}.js"))
        .collect();
    let purger = Purger::builder()
        .target(cloudflare(&stand_in, cloudflare_stand_in::TOKEN))
        .build();
    let report = purger.purge(Objects::urls(urls.clone())).await.expect("valid");
    assert!(report.is_success(), "{:?}", report.unsuccessful().next());
    assert_eq!(stand_in.throttled.load(Ordering::SeqCst), 0, "no 429");
    assert!(stand_in.violations.lock().expect("violations").is_empty());
    let asked: Vec<String> = stand_in
        .asked("files")
        .into_iter()
        .map(|url| url.as_str().expect("string").to_owned())
        .collect();
    assert_eq!(asked.len(), 4_000);
    assert_eq!(
        asked.iter().collect::<std::collections::HashSet<_>>().len(),
        4_000,
        "each URL once"
    );
    let target = report.target("cloudflare").expect("cloudflare");
    assert_eq!(target.calls, 40, "100 URLs a request");
    assert!(
        target.objects.iter().all(|line| line.outcome.id.is_some()),
        "Cloudflare's purge id"
    );
}

#[tokio::test]
async fn cloudflare_purges_tags_prefixes_without_their_scheme_and_everything() {
    let stand_in = cloudflare_stand_in::StandIn::start().await;
    let purger = Purger::builder()
        .target(cloudflare(&stand_in, cloudflare_stand_in::TOKEN))
        .build();
    let tags: Vec<String> = (0..150).map(|n| format!("product-{n}")).collect();
    assert!(purger.purge(Objects::tags(tags)).await.expect("valid").is_success());
    assert_eq!(stand_in.asked("tags").len(), 150);
    let report = purger
        .purge(Objects::prefixes(["https://www.example.com/static/"]))
        .await
        .expect("valid");
    assert!(report.is_success());
    assert_eq!(
        stand_in.asked("prefixes"),
        [serde_json::json!("www.example.com/static/")]
    );
    let report = purger.purge(Objects::everything()).await.expect("valid");
    assert!(report.is_success());
    assert_eq!(stand_in.asked("purge_everything"), [serde_json::json!(true)]);
    // A pattern is Alibaba's: skipped, with the reason.
    let report = purger
        .purge(Objects::new(ObjectKind::Regex, ["https://www.example.com/*.css"]))
        .await
        .expect("valid");
    assert_eq!(
        report.target("cloudflare").expect("cloudflare").objects[0]
            .outcome
            .status,
        Status::Skipped
    );
    assert!(stand_in.violations.lock().expect("violations").is_empty());
}

#[tokio::test]
async fn cloudflare_refusals_are_reported_with_their_code_and_throttling_is_waited_out() {
    let stand_in = cloudflare_stand_in::StandIn::start().await;
    let wrong = Purger::builder().target(cloudflare(&stand_in, "not-the-token")).build();
    let report = wrong
        .purge(Objects::urls(["https://www.example.com/a"]))
        .await
        .expect("valid");
    let line = &report.target("cloudflare").expect("cloudflare").objects[0];
    assert_eq!(line.outcome.status, Status::Failed);
    assert!(!line.outcome.retryable, "a refused token will not pass on retry");
    assert_eq!(line.outcome.detail, "403: 10000 Authentication error");
    assert!(
        !format!("{report:?}").contains("not-the-token"),
        "the token is never shown"
    );

    stand_in.throttle_first.store(2, Ordering::SeqCst);
    let purger = Purger::builder()
        .target(cloudflare(&stand_in, cloudflare_stand_in::TOKEN))
        .build();
    let report = purger
        .purge(Objects::urls(["https://www.example.com/a"]))
        .await
        .expect("valid");
    assert!(report.is_success(), "{:?}", report.unsuccessful().next());
    assert_eq!(stand_in.throttled.load(Ordering::SeqCst), 2);
    assert_eq!(
        report.target("cloudflare").expect("cloudflare").calls,
        3,
        "two 429s, then the purge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastly_purges_urls_and_keys_in_batches_of_256_soft_when_asked() {
    let stand_in = fastly_stand_in::StandIn::start().await;
    let purger = Purger::builder()
        .target(fastly(&stand_in, fastly_stand_in::TOKEN))
        .build();
    let report = purger
        .purge(Objects::urls([
            "https://www.example.com/a.css",
            "https://www.example.com/b?v=2",
        ]))
        .await
        .expect("valid");
    assert!(report.is_success(), "{:?}", report.unsuccessful().next());
    let mut urls: Vec<String> = stand_in
        .purges()
        .iter()
        .filter(|purge| purge.what == "url")
        .flat_map(|purge| purge.objects.clone())
        .collect();
    urls.sort();
    assert_eq!(urls, ["www.example.com/a.css", "www.example.com/b?v=2"]);

    let keys: Vec<String> = (0..300).map(|n| format!("key-{n}")).collect();
    let soft = Purger::builder()
        .target(fastly(&stand_in, fastly_stand_in::TOKEN).soft(true))
        .build();
    let report = soft.purge(Objects::tags(keys.clone())).await.expect("valid");
    assert!(report.is_success(), "{:?}", report.unsuccessful().next());
    let batches: Vec<fastly_stand_in::Purge> = stand_in
        .purges()
        .into_iter()
        .filter(|purge| purge.what == "keys")
        .collect();
    let mut sizes: Vec<usize> = batches.iter().map(|batch| batch.objects.len()).collect();
    sizes.sort();
    assert_eq!(sizes, [44, 256]);
    assert!(batches.iter().all(|batch| batch.soft), "Fastly-Soft-Purge: 1");
    let lines = &report.target("fastly").expect("fastly").objects;
    assert!(
        lines
            .iter()
            .all(|line| line.outcome.id.is_some() && line.outcome.detail == "soft-purged")
    );

    // No prefixes at Fastly, and purge_all is never soft: both say why, and send nothing.
    let sent = stand_in.purges().len();
    let report = soft
        .purge(Objects::prefixes(["https://www.example.com/static/"]))
        .await
        .expect("valid");
    let line = &report.target("fastly").expect("fastly").objects[0];
    assert_eq!(line.outcome.status, Status::Skipped);
    assert!(line.outcome.detail.contains("no prefix purge"), "{line:?}");
    let report = soft.purge(Objects::everything()).await.expect("valid");
    assert!(
        report.target("fastly").expect("fastly").objects[0]
            .outcome
            .detail
            .contains("cannot be soft")
    );
    assert_eq!(stand_in.purges().len(), sent);
    let report = purger.purge(Objects::everything()).await.expect("valid");
    assert!(report.is_success());
    assert_eq!(stand_in.purges().last().expect("purge").what, "all");
    assert!(stand_in.violations.lock().expect("violations").is_empty());
}

#[tokio::test]
async fn fastly_refusals_and_throttling() {
    let stand_in = fastly_stand_in::StandIn::start().await;
    let wrong = Purger::builder().target(fastly(&stand_in, "not-the-token")).build();
    let report = wrong.purge(Objects::tags(["k"])).await.expect("valid");
    let line = &report.target("fastly").expect("fastly").objects[0];
    assert_eq!(line.outcome.status, Status::Failed);
    assert!(!line.outcome.retryable);
    assert_eq!(line.outcome.detail, "401: Provided credentials are missing or invalid");
    stand_in.throttle_first.store(1, Ordering::SeqCst);
    let purger = Purger::builder()
        .target(fastly(&stand_in, fastly_stand_in::TOKEN))
        .build();
    assert!(purger.purge(Objects::tags(["k"])).await.expect("valid").is_success());
    assert_eq!(stand_in.throttled.load(Ordering::SeqCst), 1);
}

#[test]
fn tokens_never_show_in_debug() {
    let cloudflare = CloudflarePurge::new("zone", "cf-secret-token-value").expect("client");
    let fastly = FastlyPurge::new("service", "fastly-secret-token-value").expect("client");
    let shown = format!("{cloudflare:?} {fastly:?}");
    assert!(!shown.contains("secret-token-value"), "{shown}");
}

/// Cloudflare counts single-file purges in URLs a second, apart from the
/// request bucket of every other purge: on the Free plan, 10,000 URLs take
/// about 13 seconds (800 a second), where 5 requests a minute would take a
/// quarter of an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_urls_on_the_free_plan_wait_on_the_url_rate_not_the_request_bucket() {
    let stand_in = cloudflare_stand_in::StandIn::start_with(cloudflare_stand_in::Limits::FREE).await;
    let urls: Vec<String> = (0..10_000)
        .map(|n| format!("https://www.example.com/assets/{n}.js"))
        .collect();
    let purger = Purger::builder()
        .target(cloudflare(&stand_in, cloudflare_stand_in::TOKEN).plan(Plan::Free))
        .build();
    let started = std::time::Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(180), purger.purge(Objects::urls(urls)))
        .await
        .expect("10,000 URLs within 3 minutes: URL purges wait on the URL rate")
        .expect("valid");
    eprintln!("10,000 URLs, Free plan: {:.1} s", started.elapsed().as_secs_f64());
    assert!(report.is_success(), "{:?}", report.unsuccessful().next());
    assert_eq!(stand_in.throttled.load(Ordering::SeqCst), 0, "no 429");
    assert!(stand_in.violations.lock().expect("violations").is_empty());
    assert_eq!(stand_in.asked("files").len(), 10_000);
    assert_eq!(report.target("cloudflare").expect("cloudflare").calls, 100);
    // The request bucket is still full: 25 tag purges go at once.
    let tags: Vec<String> = (0..2_500).map(|n| format!("product-{n}")).collect();
    let report = purger.purge(Objects::tags(tags)).await.expect("valid");
    assert!(report.is_success(), "{:?}", report.unsuccessful().next());
    assert_eq!(stand_in.throttled.load(Ordering::SeqCst), 0, "no 429");
}

#[tokio::test]
async fn cloudflare_purges_hosts_and_the_other_targets_skip_them_with_a_reason() {
    let stand_in = cloudflare_stand_in::StandIn::start().await;
    let cache = edgecache::CacheMiddleware::builder()
        .store(edgecache::store::MemoryStore::default())
        .build()
        .expect("cache");
    let purger = Purger::builder()
        .target(cloudflare(&stand_in, cloudflare_stand_in::TOKEN))
        .target(fastly(&fastly_stand_in::StandIn::start().await, fastly_stand_in::TOKEN))
        .target(cache)
        .build();
    let report = purger
        .purge(Objects::hosts(["WWW.Example.com", "images.example.com"]))
        .await
        .expect("valid");
    assert_eq!(
        stand_in.asked("hosts"),
        [
            serde_json::json!("www.example.com"),
            serde_json::json!("images.example.com")
        ]
    );
    let cloudflare = report.target("cloudflare").expect("cloudflare");
    assert!(
        cloudflare
            .objects
            .iter()
            .all(|line| line.outcome.status == Status::Done)
    );
    for other in ["fastly", "cache"] {
        let line = &report.target(other).expect(other).objects[0];
        assert_eq!(line.outcome.status, Status::Skipped, "{other}");
        assert!(line.outcome.detail.contains("host"), "{other}: {}", line.outcome.detail);
    }
    // A URL is no host name: refused before anything is sent.
    let Err(edgecache_purge::PurgeRunError::Invalid(invalid)) =
        purger.purge(Objects::hosts(["https://www.example.com/"])).await
    else {
        panic!("a URL given as a host is refused");
    };
    assert!(invalid[0].reason.contains("without scheme"), "{invalid:?}");
    assert!(stand_in.violations.lock().expect("violations").is_empty());
}

/// Cloudflare: "URI query strings & fragments cannot purge by prefix", and
/// one bad prefix fails its whole request. So it is refused before sending,
/// with the reason.
#[tokio::test]
async fn a_cloudflare_prefix_with_a_query_is_refused_before_anything_is_sent() {
    let stand_in = cloudflare_stand_in::StandIn::start().await;
    let purger = Purger::builder()
        .target(cloudflare(&stand_in, cloudflare_stand_in::TOKEN))
        .build();
    let result = purger
        .purge(Objects::prefixes([
            "https://www.example.com/static/",
            "https://www.example.com/search?q=",
        ]))
        .await;
    let Err(edgecache_purge::PurgeRunError::Invalid(invalid)) = result else {
        panic!("refused before sending: {result:?}");
    };
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0].index, 1);
    assert!(
        invalid[0]
            .reason
            .starts_with("cloudflare: a Cloudflare prefix has no query string"),
        "{invalid:?}"
    );
    assert!(stand_in.accepted.lock().expect("accepted").is_empty(), "nothing sent");
    let deep = format!("https://www.example.com/{}", "a/".repeat(32));
    assert!(purger.purge(Objects::prefixes([deep])).await.is_err(), "at most 31 `/`");
}

/// Each target takes the tags its vendor takes: Cloudflare bounds only the
/// whole header (16 KB), Fastly a key at 1,024 bytes.
#[tokio::test]
async fn tags_as_long_as_each_vendor_takes_pass_and_longer_keys_are_refused_by_fastly() {
    let cloudflare_api = cloudflare_stand_in::StandIn::start().await;
    let fastly_api = fastly_stand_in::StandIn::start().await;
    let long = "t".repeat(1_024);
    let cloudflare_only = Purger::builder()
        .target(cloudflare(&cloudflare_api, cloudflare_stand_in::TOKEN))
        .build();
    let longer = "t".repeat(2_000);
    assert!(
        cloudflare_only
            .purge(Objects::tags([longer.clone()]))
            .await
            .expect("Cloudflare takes long tags")
            .is_success()
    );
    let both = Purger::builder()
        .target(cloudflare(&cloudflare_api, cloudflare_stand_in::TOKEN))
        .target(fastly(&fastly_api, fastly_stand_in::TOKEN))
        .build();
    let report = both
        .purge(Objects::tags([long.clone()]))
        .await
        .expect("1,024 bytes pass");
    assert!(report.is_success(), "{:?}", report.unsuccessful().next());
    assert_eq!(fastly_api.purges()[0].objects, [long]);
    let Err(edgecache_purge::PurgeRunError::Invalid(invalid)) = both.purge(Objects::tags([longer])).await else {
        panic!("Fastly refuses a key over 1,024 bytes before anything is sent");
    };
    assert!(
        invalid[0]
            .reason
            .starts_with("fastly: a Fastly surrogate key is at most 1024 bytes"),
        "{invalid:?}"
    );
    assert!(fastly_api.violations.lock().expect("violations").is_empty());
}

/// Fastly names the purged object by the call's path and its own query
/// string; escaped into the path, a query names an object nobody cached.
#[tokio::test]
async fn a_fastly_url_with_a_query_is_purged_with_the_query_as_the_calls_own() {
    let stand_in = fastly_stand_in::StandIn::start().await;
    let purger = Purger::builder()
        .target(fastly(&stand_in, fastly_stand_in::TOKEN))
        .build();
    let report = purger
        .purge(Objects::urls(["https://www.example.com/search?q=a%20b&page=2"]))
        .await
        .expect("valid");
    assert!(report.is_success());
    assert_eq!(
        stand_in.purges()[0].objects,
        ["www.example.com/search?q=a%20b&page=2"],
        "the query arrived as the call's query, byte for byte"
    );
}

/// `record_sending` is told each call's objects before the call goes (a
/// call it refuses is not sent), and objects an external journal hands back
/// in doubt are reported, never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_recorded_before_they_go_and_objects_in_doubt_are_not_sent_again() {
    use edgecache_purge::Settled;
    use std::sync::{Arc, Mutex};
    let (cloudflare_api, fastly_api) = (
        cloudflare_stand_in::StandIn::start().await,
        fastly_stand_in::StandIn::start().await,
    );
    let urls: Vec<String> = (0..250).map(|n| format!("https://www.example.com/{n}.css")).collect();
    let recorded: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let in_doubt = Settled {
        target: "cloudflare".into(),
        object: urls[0].clone(),
        status: Status::Failed,
        detail: "in doubt: its call's answer was never recorded".into(),
        id: None,
    };
    let record = recorded.clone();
    let purger = Purger::builder()
        .target(cloudflare(&cloudflare_api, cloudflare_stand_in::TOKEN))
        .target(fastly(&fastly_api, fastly_stand_in::TOKEN))
        .external_journal(vec![in_doubt], |_| Box::pin(async {}))
        .record_sending(move |target, objects| {
            // Fastly's calls are refused: they must not go.
            let sending = target != "fastly";
            record
                .lock()
                .expect("recorded")
                .push((target.to_owned(), objects.len()));
            Box::pin(async move { sending })
        })
        .build();
    let report = purger.purge(Objects::urls(urls.clone())).await.expect("valid");

    let calls = recorded.lock().expect("recorded").clone();
    let cloudflare_calls: Vec<usize> = calls
        .iter()
        .filter(|(t, _)| t == "cloudflare")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(
        cloudflare_calls.iter().sum::<usize>(),
        249,
        "every call, before it went: {calls:?}"
    );
    assert_eq!(
        cloudflare_api.asked("files").len(),
        249,
        "the URL in doubt is not sent again"
    );
    let doubted = report
        .target("cloudflare")
        .and_then(|target| target.objects.iter().find(|line| line.object == urls[0]))
        .expect("its line");
    assert_eq!(doubted.outcome.status, Status::Failed);
    assert!(
        doubted.outcome.detail.starts_with("in doubt"),
        "{}",
        doubted.outcome.detail
    );
    assert!(
        fastly_api.purges.lock().expect("purges").is_empty(),
        "a call that could not be recorded is not sent"
    );
    let fastly_report = report.target("fastly").expect("fastly");
    assert!(
        fastly_report
            .objects
            .iter()
            .all(|line| line.outcome.status == Status::NotSent)
    );
}
