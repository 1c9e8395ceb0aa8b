//! The Cloudflare and Fastly targets against local stand-ins of their APIs
//! (`stand_ins/cloudflare.rs`, `stand_ins/fastly.rs`): every object kind,
//! the limits, soft purges, refusals, and the command line.

#[path = "stand_ins/cloudflare.rs"]
mod cloudflare_stand_in;
mod common;
#[path = "stand_ins/fastly.rs"]
mod fastly_stand_in;

use std::sync::atomic::Ordering;
use std::time::Duration;

use edgecache::purge::cloudflare::{CloudflarePurge, Plan};
use edgecache::purge::fastly::FastlyPurge;
use edgecache::purge::{Backoff, ObjectKind, Objects, Purger, Status};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_both_from_the_targets_file_and_purges_everything_only_with_yes() {
    let cloudflare = cloudflare_stand_in::StandIn::start().await;
    let fastly = fastly_stand_in::StandIn::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let targets = directory.path().join("edgecache.toml");
    std::fs::write(
        &targets,
        format!(
            "[[target]]\nkind = \"cloudflare\"\nplan = \"pro\"\napi_base = \"{}\"\n\n[[target]]\nkind = \"fastly\"\nservice = \"{}\"\napi_base = \"{}\"\n",
            cloudflare.api_base(),
            fastly_stand_in::SERVICE,
            fastly.api_base()
        ),
    )
    .expect("write");
    let targets = targets.to_str().expect("utf-8");
    let env = [
        ("CLOUDFLARE_API_TOKEN", cloudflare_stand_in::TOKEN),
        ("FASTLY_API_TOKEN", fastly_stand_in::TOKEN),
    ];
    let run = common::edgecache_with_env(
        [
            "purge",
            "tag",
            "product-42",
            "--targets",
            targets,
            "--zone",
            cloudflare_stand_in::ZONE,
            "--soft",
            "--json",
        ],
        &env,
    )
    .await;
    assert!(run.success, "{}", run.stderr);
    let results: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|result| result["status"] == "done"), "{results:?}");
    assert_eq!(cloudflare.asked("tags"), [serde_json::json!("product-42")]);
    assert_eq!(
        fastly.purges(),
        [fastly_stand_in::Purge {
            what: "keys",
            objects: vec!["product-42".into()],
            soft: true
        }]
    );
    for secret in [cloudflare_stand_in::TOKEN, fastly_stand_in::TOKEN] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "a token was printed"
        );
    }

    // Everything, only when asked twice over.
    let run = common::edgecache_with_env(
        [
            "purge",
            "everything",
            "--targets",
            targets,
            "--zone",
            cloudflare_stand_in::ZONE,
        ],
        &env,
    )
    .await;
    assert!(!run.success);
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    assert!(
        cloudflare.asked("purge_everything").is_empty(),
        "nothing sent without --yes"
    );
    let run = common::edgecache_with_env(
        [
            "purge",
            "everything",
            "--yes",
            "--targets",
            targets,
            "--zone",
            cloudflare_stand_in::ZONE,
        ],
        &env,
    )
    .await;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(cloudflare.asked("purge_everything"), [serde_json::json!(true)]);
    assert_eq!(fastly.purges().last().expect("purge").what, "all");

    // Without a zone or a token, the error says where to put one.
    let run = common::edgecache_with_env(
        ["purge", "url", "https://www.example.com/a", "--targets", targets],
        &env,
    )
    .await;
    assert!(!run.success);
    assert!(run.stderr.contains("no zone"), "{}", run.stderr);
    let run = common::edgecache([
        "purge",
        "url",
        "https://www.example.com/a",
        "--targets",
        targets,
        "--zone",
        "z",
    ])
    .await;
    assert!(run.stderr.contains("$CLOUDFLARE_API_TOKEN"), "{}", run.stderr);
}
