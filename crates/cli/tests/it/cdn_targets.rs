//! `edgecache purge` reaching Cloudflare and Fastly from the targets file,
//! against local stand-ins of their APIs
//! (`edgecache_testkit::stand_ins::{cloudflare, fastly}`).

use edgecache_testkit as common;
use edgecache_testkit::stand_ins::cloudflare as cloudflare_stand_in;
use edgecache_testkit::stand_ins::fastly as fastly_stand_in;

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

/// A targets file naming both stand-ins, Cloudflare with its zone.
fn both_targets(
    directory: &std::path::Path,
    cloudflare: &cloudflare_stand_in::StandIn,
    fastly: &fastly_stand_in::StandIn,
) -> std::path::PathBuf {
    let targets = directory.join("edgecache.toml");
    std::fs::write(
        &targets,
        format!(
            "[[target]]\nkind = \"cloudflare\"\nzone = \"{}\"\napi_base = \"{}\"\n\n[[target]]\nkind = \"fastly\"\nservice = \"{}\"\napi_base = \"{}\"\n",
            cloudflare_stand_in::ZONE,
            cloudflare.api_base(),
            fastly_stand_in::SERVICE,
            fastly.api_base()
        ),
    )
    .expect("write");
    targets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_purges_a_host_at_cloudflare_and_fastly_skips_it() {
    let cloudflare = cloudflare_stand_in::StandIn::start().await;
    let fastly = fastly_stand_in::StandIn::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let targets = both_targets(directory.path(), &cloudflare, &fastly);
    let env = [
        ("CLOUDFLARE_API_TOKEN", cloudflare_stand_in::TOKEN),
        ("FASTLY_API_TOKEN", fastly_stand_in::TOKEN),
    ];
    let run = common::edgecache_with_env(
        [
            "purge",
            "host",
            "www.example.com",
            "--targets",
            targets.to_str().expect("utf-8"),
            "--json",
        ],
        &env,
    )
    .await;
    assert!(run.success, "a skip is no failure: {}", run.stderr);
    let results: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).expect("JSON");
    let status = |target: &str| {
        results
            .iter()
            .find(|result| result["target"] == target)
            .map(|result| result["status"].clone())
    };
    assert_eq!(status("cloudflare"), Some(serde_json::json!("done")), "{results:?}");
    assert_eq!(status("fastly"), Some(serde_json::json!("skipped")), "{results:?}");
    assert_eq!(cloudflare.asked("hosts"), [serde_json::json!("www.example.com")]);
    assert!(fastly.purges().is_empty());
}

/// `--verify --rewarm` after a purge at two CDNs, one of whose edges lies:
/// a column and fields per line, a rewarm held back for the lie, and a
/// failing exit; then `purge verify` alone, later, against a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_each_edge_and_fails_when_one_still_serves_the_old_copy() {
    use edgecache_testkit::stand_ins::edge::{Edge, Flavor};
    let old = std::time::Duration::from_secs(900);
    let honest = Edge::start(Flavor::Cloudflare).await;
    honest.preload("/a.css", old);
    let liar = Edge::start(Flavor::Fastly).await;
    liar.preload("/f.css", old);
    liar.lie();
    let cloudflare = cloudflare_stand_in::StandIn::start().await;
    cloudflare.edges.attach(&honest);
    let fastly = fastly_stand_in::StandIn::start().await;
    fastly.edges.attach(&liar);
    let directory = tempfile::tempdir().expect("tempdir");
    let targets = both_targets(directory.path(), &cloudflare, &fastly);
    let targets = targets.to_str().expect("utf-8");
    let env = [
        ("CLOUDFLARE_API_TOKEN", cloudflare_stand_in::TOKEN),
        ("FASTLY_API_TOKEN", fastly_stand_in::TOKEN),
    ];
    let (a, f) = (honest.url("/a.css"), liar.url("/f.css"));
    let run = common::edgecache_with_env(
        [
            "purge",
            "url",
            &a,
            &f,
            "--targets",
            targets,
            "--verify",
            "--rewarm",
            "--verify-timeout",
            "2s",
            "--json",
        ],
        &env,
    )
    .await;
    assert!(!run.success, "something is still cached: {}", run.stderr);
    let results: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(results.len(), 4, "{results:#?}");
    let line = |target: &str, url: &str| {
        results
            .iter()
            .find(|line| line["target"] == target && line["object"] == url)
            .unwrap_or_else(|| panic!("no line for {target} {url}: {results:#?}"))
    };
    assert_eq!(line("cloudflare", &a)["status"], "done");
    assert_eq!(line("cloudflare", &a)["verified"], "evicted", "{results:#?}");
    assert_eq!(line("cloudflare", &a)["edge"], "colo LHR");
    assert_eq!(line("cloudflare", &a)["rewarm"], "done");
    assert_eq!(line("fastly", &f)["verified"], "still_cached", "{results:#?}");
    assert!(line("fastly", &f)["age_seconds"].as_u64().is_some_and(|age| age >= 900));
    assert_eq!(line("fastly", &f)["rewarm"], "not_sent");
    assert_eq!(
        liar.origin_requests(),
        Vec::<String>::new(),
        "the lie was never refetched"
    );
    assert_eq!(
        honest.origin_requests(),
        ["/a.css"],
        "one fetch after the purge; the rewarm hit it"
    );

    // Later, alone, in text: the honest edge's copy is younger than ten minutes ago.
    let run = common::edgecache_with_env(
        [
            "purge",
            "verify",
            &a,
            "--since",
            "10m",
            "--targets",
            targets,
            "--only",
            "cloudflare",
        ],
        &env,
    )
    .await;
    assert!(run.success, "{}", run.stderr);
    let columns: Vec<&str> = run.stdout.trim().split('\t').collect();
    assert_eq!(
        &columns[..4],
        ["checked", "evicted", "cloudflare", a.as_str()],
        "{}",
        run.stdout
    );
}
