//! Verification and rewarm against edges that behave like edges
//! (`edgecache_testkit::stand_ins::edge`): each caches in front of its own
//! origin, answers with its vendor's headers and `Age`, and evicts when its
//! vendor's purge API stand-in accepts a purge. One lies.

use std::time::{Duration, SystemTime};

use edgecache_purge::alibaba::{AlibabaCdnClient, Credentials as AlibabaCredentials, RateLimits};
use edgecache_purge::cloudflare::{CloudflarePurge, Plan};
use edgecache_purge::fastly::FastlyPurge;
use edgecache_purge::{Backoff, Objects, Purger, Seen, Status, Verify};
use edgecache_testkit::stand_ins::edge::{Edge, Flavor};
use edgecache_testkit::stand_ins::{akamai, alibaba, cloudflare, fastly};

/// How old the copies at the edges are when a test starts.
const OLD: Duration = Duration::from_secs(600);

fn quick() -> Backoff {
    Backoff {
        base: Duration::from_millis(10),
        cap: Duration::from_millis(100),
    }
}

async fn cloudflare_target(edge: &Edge) -> (cloudflare::StandIn, CloudflarePurge) {
    let stand_in = cloudflare::StandIn::start().await;
    stand_in.edges.attach(edge);
    let target = CloudflarePurge::new(cloudflare::ZONE, cloudflare::TOKEN)
        .expect("client")
        .plan(Plan::Pro)
        .api_base(stand_in.api_base())
        .backoff(quick());
    (stand_in, target)
}

async fn fastly_target(edge: &Edge) -> (fastly::StandIn, FastlyPurge) {
    let stand_in = fastly::StandIn::start().await;
    stand_in.edges.attach(edge);
    let target = FastlyPurge::new(fastly::SERVICE, fastly::TOKEN)
        .expect("client")
        .api_base(stand_in.api_base())
        .backoff(quick());
    (stand_in, target)
}

async fn alibaba_target(edge: &Edge) -> (alibaba::StandIn, AlibabaCdnClient) {
    let (stand_in, address) = alibaba::StandIn::start(alibaba::Config::default()).await;
    stand_in.edges.attach(edge);
    let target = AlibabaCdnClient::new(AlibabaCredentials::new(alibaba::KEY_ID, alibaba::SECRET))
        .expect("client")
        .endpoint(format!("http://{address}").parse().expect("url"))
        .rate_limits(RateLimits {
            submit: (5, 45.0),
            describe: (1, 4.0),
            describe_by_id: (3, 27.0),
            quota: (5, 20.0),
        })
        .backoff(quick());
    (stand_in, target)
}

/// An edge holding old copies of `paths`.
async fn edge_with(flavor: Flavor, paths: &[&str]) -> Edge {
    let edge = Edge::start(flavor).await;
    for path in paths {
        edge.preload(path, OLD);
    }
    edge
}

/// Each vendor's edge, purged and asked: evicted, with the edge named where
/// the vendor names it; and the same check before the purge says still
/// cached, so the check can tell the two apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_vendor_edge_reads_evicted_after_its_purge() {
    let paths = ["/assets/app.css", "/assets/app.js"];
    for flavor in [Flavor::Akamai, Flavor::Cloudflare, Flavor::Fastly, Flavor::Alibaba] {
        let edge = edge_with(flavor, &paths).await;
        let urls: Vec<String> = paths.iter().map(|path| edge.url(path)).collect();
        let (purger, expected_edge) = match flavor {
            Flavor::Akamai => {
                let (stand_in, target) = akamai::start().await;
                stand_in.edges.attach(&edge);
                (
                    Purger::builder().target(target).build(),
                    "a23-45-67-89.deploy.akamaitechnologies.com",
                )
            }
            Flavor::Cloudflare => {
                let (_stand_in, target) = cloudflare_target(&edge).await;
                (Purger::builder().target(target).build(), "colo LHR")
            }
            Flavor::Fastly => {
                let (_stand_in, target) = fastly_target(&edge).await;
                (Purger::builder().target(target).build(), "cache-lhr7380-LHR")
            }
            Flavor::Alibaba => {
                let (_stand_in, target) = alibaba_target(&edge).await;
                (Purger::builder().target(target).build(), "kunlun19.cn3157")
            }
        };
        let before = purger
            .verify_urls(&urls, SystemTime::now(), Verify::default().timeout(Duration::ZERO))
            .await
            .expect("verify");
        assert_eq!(
            before.count(Seen::StillCached),
            2,
            "{flavor:?}: before the purge, the old copies: {:?}",
            before.checks
        );

        let report = purger.purge(Objects::urls(urls.clone())).await.expect("valid");
        assert!(report.is_success(), "{flavor:?}: {:?}", report.unsuccessful().next());
        let checked = purger.verify(&report, Verify::default()).await.expect("verify");
        assert_eq!(checked.checks.len(), 2, "{flavor:?}");
        for check in &checked.checks {
            assert_eq!(check.verdict.seen, Seen::Evicted, "{flavor:?}: {check:?}");
            assert_eq!(check.verdict.edge.as_deref(), Some(expected_edge), "{flavor:?}");
            assert_eq!(check.attempts, 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_edge_is_reported_still_cached_and_is_not_rewarmed() {
    let edge = edge_with(Flavor::Cloudflare, &["/app.css"]).await;
    edge.lie();
    let (stand_in, target) = cloudflare_target(&edge).await;
    let url = edge.url("/app.css");
    let purger = Purger::builder().target(target).build();
    let report = purger.purge(Objects::urls([url.clone()])).await.expect("valid");
    assert!(report.is_success(), "the API accepted it");
    assert_eq!(stand_in.asked("files").len(), 1);

    let checked = purger
        .verify(&report, Verify::default().timeout(Duration::from_secs(2)).rewarm(true))
        .await
        .expect("verify");
    let check = checked.check("cloudflare", &url).expect("a check");
    assert_eq!(check.verdict.seen, Seen::StillCached, "{check:?}");
    assert!(
        check.verdict.age_seconds.is_some_and(|age| age >= OLD.as_secs()),
        "{check:?}"
    );
    assert!(check.attempts >= 2, "asked again until the timeout: {check:?}");
    assert!(!checked.is_evicted_everywhere());
    assert_eq!(checked.rewarmed.len(), 1);
    assert_eq!(
        checked.rewarmed[0].outcome.status,
        Status::NotSent,
        "{:?}",
        checked.rewarmed
    );
    assert!(edge.origin_requests().is_empty(), "nothing reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_settles_late_is_asked_again_until_it_has() {
    let edge = edge_with(Flavor::Fastly, &["/late.css"]).await;
    edge.settle_after(Duration::from_millis(1500));
    let (_stand_in, target) = fastly_target(&edge).await;
    let purger = Purger::builder().target(target).build();
    let report = purger
        .purge(Objects::urls([edge.url("/late.css")]))
        .await
        .expect("valid");
    let checked = purger
        .verify(&report, Verify::default().timeout(Duration::from_secs(20)))
        .await
        .expect("verify");
    let check = &checked.checks[0];
    assert_eq!(check.verdict.seen, Seen::Evicted, "{check:?}");
    assert!(check.attempts >= 2, "the first check saw the old copy: {check:?}");
}

/// A rewarm fetches each URL once through its edge, never more than the
/// bound at once or a second, so the origin sees each URL once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewarm_keeps_to_its_bound_and_asks_the_origin_once_per_url() {
    let paths: Vec<String> = (0..30).map(|n| format!("/static/{n}.js")).collect();
    let path_refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let edge = edge_with(Flavor::Cloudflare, &path_refs).await;
    edge.answer_after(Duration::from_millis(20));
    let (_stand_in, target) = cloudflare_target(&edge).await;
    let urls: Vec<String> = paths.iter().map(|path| edge.url(path)).collect();
    let purger = Purger::builder().target(target).build();
    let report = purger.purge(Objects::urls(urls.clone())).await.expect("valid");
    let (concurrency, rate) = (2, 40.0);
    let checked = purger
        .verify(&report, Verify::default().rewarm(true).per_host(concurrency, rate))
        .await
        .expect("verify");
    assert_eq!(checked.count(Seen::Evicted), 30, "{:?}", checked.checks);
    assert_eq!(checked.rewarmed.len(), 30);
    assert!(
        checked
            .rewarmed
            .iter()
            .all(|rewarm| rewarm.outcome.status == Status::Done && rewarm.via == "edge"),
        "{:?}",
        checked.rewarmed
    );

    let requests = edge.requests();
    assert_eq!(requests.len(), 60, "one check and one fetch per URL");
    assert!(
        edge.most_in_flight() <= concurrency,
        "{} at once",
        edge.most_in_flight()
    );
    // A bucket of one at 40 a second: never more than 1 + 40·t requests in
    // t seconds (slack of 2 for arrival jitter).
    for (at, (start, _, _)) in requests.iter().enumerate() {
        let within = requests[at..]
            .iter()
            .take_while(|(time, _, _)| time.duration_since(*start) < Duration::from_millis(500))
            .count();
        assert!(within <= 1 + 20 + 2, "{within} requests within 0.5 s");
    }
    let origin = edge.origin_requests();
    assert_eq!(origin.len(), 30, "each URL once at the origin: {origin:?}");
    let distinct: std::collections::HashSet<&String> = origin.iter().collect();
    assert_eq!(distinct.len(), 30);
}

/// A URL whose purge failed is never fetched again; Alibaba Cloud warms with
/// its own prefetch, not a fetch from here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewarm_never_fetches_a_url_whose_purge_failed() {
    let edge = edge_with(Flavor::Alibaba, &["/ok/a.css", "/broken/b.css"]).await;
    let (stand_in, target) = alibaba_target(&edge).await;
    let purger = Purger::builder().target(target).build();
    let (good, bad) = (edge.url("/ok/a.css"), edge.url("/broken/b.css"));
    let report = purger
        .purge(Objects::urls([good.clone(), bad.clone()]))
        .await
        .expect("valid");
    let lines: Vec<Status> = report.lines().map(|line| line.outcome.status).collect();
    assert_eq!(
        lines,
        [Status::Done, Status::Failed],
        "the stand-in fails /broken/ tasks"
    );

    let checked = purger
        .verify(&report, Verify::default().rewarm(true))
        .await
        .expect("verify");
    assert_eq!(
        checked.check("alibaba", &good).expect("check").verdict.seen,
        Seen::Evicted
    );
    let not_checked = checked.check("alibaba", &bad).expect("check");
    assert_eq!((not_checked.verdict.seen, not_checked.attempts), (Seen::Unknown, 0));

    let by_url = |url: &str| {
        checked
            .rewarmed
            .iter()
            .find(|rewarm| rewarm.url == url)
            .expect("a line")
    };
    assert_eq!(by_url(&good).via, "alibaba", "its own prefetch");
    assert_eq!(by_url(&good).outcome.status, Status::Done, "{:?}", by_url(&good));
    assert_eq!(by_url(&bad).outcome.status, Status::NotSent);
    let prefetched: Vec<String> = stand_in
        .seen()
        .prefetch_parameters
        .iter()
        .filter_map(|parameters| parameters.get("ObjectPath").cloned())
        .collect();
    assert_eq!(prefetched, std::slice::from_ref(&good), "only the URL purged");
    assert!(
        !edge.origin_requests().iter().any(|path| path.contains("broken")),
        "the failed URL never reached the origin"
    );
    assert!(edge.holds("/broken/b.css"), "its old copy is still there");
}

/// Four targets in one run: three honest edges and a lying one. Each URL
/// reads evicted at its own edge, except the liar's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_run_across_four_targets_names_the_one_that_lied() {
    let akamai_edge = edge_with(Flavor::Akamai, &["/a.css"]).await;
    let cloudflare_edge = edge_with(Flavor::Cloudflare, &["/c.css"]).await;
    let fastly_edge = edge_with(Flavor::Fastly, &["/f.css"]).await;
    fastly_edge.lie();
    let alibaba_edge = edge_with(Flavor::Alibaba, &["/b.css"]).await;
    let (akamai_stand_in, akamai_target) = akamai::start().await;
    akamai_stand_in.edges.attach(&akamai_edge);
    let (_c, cloudflare) = cloudflare_target(&cloudflare_edge).await;
    let (_f, fastly) = fastly_target(&fastly_edge).await;
    let (_b, alibaba) = alibaba_target(&alibaba_edge).await;
    let own = [
        ("akamai", akamai_edge.url("/a.css")),
        ("cloudflare", cloudflare_edge.url("/c.css")),
        ("fastly", fastly_edge.url("/f.css")),
        ("alibaba", alibaba_edge.url("/b.css")),
    ];
    let purger = Purger::builder()
        .target(akamai_target)
        .target(cloudflare)
        .target(fastly)
        .target(alibaba)
        .build();
    let report = purger
        .purge(Objects::urls(own.iter().map(|(_, url)| url.clone())))
        .await
        .expect("valid");
    assert!(report.is_success(), "{:?}", report.unsuccessful().next());
    let checked = purger
        .verify(&report, Verify::default().timeout(Duration::from_secs(2)))
        .await
        .expect("verify");
    assert_eq!(checked.checks.len(), 16, "each target checks each URL");
    for (target, url) in &own {
        let check = checked.check(target, url).expect("a check");
        let expected = if *target == "fastly" {
            Seen::StillCached
        } else {
            Seen::Evicted
        };
        assert_eq!(check.verdict.seen, expected, "{target}: {check:?}");
    }
    let liars: std::collections::HashSet<&str> = checked.still_cached().map(|check| check.url.as_str()).collect();
    assert_eq!(liars, [own[2].1.as_str()].into(), "only the lying edge's URL");
}
