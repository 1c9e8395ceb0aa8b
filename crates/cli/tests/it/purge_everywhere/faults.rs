//! A layer that fails, kinds no target takes, and bad objects that send nothing.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_that_fails_fails_its_own_objects_and_the_report_says_the_order_broke() {
    let layers = layers().await;
    let (url, _) = layers.cached("app").await;
    // A versioned server nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let down = edgecache_versions::Client::builder(gone)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let purger = Purger::builder()
        .target(layers.cache.clone())
        .target(down.clone())
        .target(layers.akamai_client())
        .build();
    let report = purger.purge(Objects::urls([url.clone()])).await.expect("valid");
    assert!(!report.is_success());
    let failed = &report.target("versions").expect("versions").objects[0];
    assert_eq!(failed.outcome.status, Status::Failed);
    assert!(failed.outcome.retryable, "a server that is down may come back");
    assert!(failed.outcome.detail.contains("listing resources"), "{failed:?}");
    assert!(
        report
            .order_broken
            .as_deref()
            .is_some_and(|why| why.contains("versions failed")),
        "{:?}",
        report.order_broken
    );
    assert_eq!(
        report.target("akamai").expect("akamai").objects[0].outcome.status,
        Status::Accepted
    );
    assert!(
        !layers.cache.contains_url(&url).await.expect("contains"),
        "later layers still ran"
    );

    // With stop_on_failure, nothing after the failed layer is sent.
    let (url, _) = layers.cached("next").await;
    let sent_before = layers.akamai.seen.load(Ordering::SeqCst);
    let purger = Purger::builder()
        .target(layers.cache.clone())
        .target(down)
        .target(layers.akamai_client())
        .stop_on_failure(true)
        .build();
    let report = purger.purge(Objects::urls([url.clone()])).await.expect("valid");
    assert_eq!(
        report.target("akamai").expect("akamai").objects[0].outcome.status,
        Status::NotSent
    );
    assert_eq!(
        report.target("cache").expect("cache").objects[0].outcome.status,
        Status::NotSent
    );
    assert_eq!(layers.akamai.seen.load(Ordering::SeqCst), sent_before);
    assert!(layers.cache.contains_url(&url).await.expect("contains"));
}

#[tokio::test]
async fn objects_of_a_kind_no_target_takes_are_skipped_and_bad_ones_send_nothing() {
    let layers = layers().await;
    let purger = layers.purger(Arc::default());
    let report = purger
        .purge(Objects::new(ObjectKind::Regex, [layers.origin.url("/cdn/*.css")]))
        .await
        .expect("valid");
    for name in ["cache", "versions", "akamai"] {
        assert_eq!(
            report.target(name).expect(name).objects[0].outcome.status,
            Status::Skipped,
            "{name}"
        );
    }
    assert_eq!(layers.alibaba.seen().accepted_at[0].1, "regex");

    let error = purger
        .purge(Objects::urls(["https://www.example.com/ok", "ftp://nope/"]))
        .await
        .expect_err("invalid");
    assert!(
        error.to_string().contains("must start with http:// or https://"),
        "{error}"
    );
    assert_eq!(layers.akamai.seen.load(Ordering::SeqCst), 0);
}
