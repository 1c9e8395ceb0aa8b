//! Alibaba Cloud CDN refresh and prefetch against a local stand-in
//! (`edgecache_testkit::stand_ins::alibaba`) that verifies every signature, enforces the
//! limits, keeps a quota and runs tasks.

use std::time::Duration;

use edgecache_purge::Backoff;
use edgecache_purge::alibaba::{
    AlibabaCdnClient, AlibabaError, Area, BatchError, Credentials, ObjectType, Operation, PrefetchOptions, RateLimits,
    TaskFilter, UrlOutcome,
};

use edgecache_testkit::stand_ins::alibaba as stand_in;
use stand_in::{Config, KEY_ID, SECRET, StandIn};

fn quick(client: AlibabaCdnClient) -> AlibabaCdnClient {
    client
        .rate_limits(RateLimits {
            submit: (5, 45.0),
            describe: (1, 4.0),
            describe_by_id: (3, 27.0),
            quota: (5, 20.0),
        })
        .backoff(Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(100),
        })
}

#[tokio::test]
async fn prefetch_sends_its_options_under_sts_credentials_and_reports_each_url() {
    let token = "CAIS-stand-in-token";
    let (stand_in, address) = StandIn::start(Config {
        token: Some(token.into()),
        ..Config::default()
    })
    .await;
    let credentials = Credentials::new(KEY_ID, SECRET).with_security_token(token);
    let client = quick(AlibabaCdnClient::new(credentials).expect("client"))
        .endpoint(format!("http://{address}").parse().expect("url"));
    let urls: Vec<String> = (0..250).map(|n| format!("https://example.com/warm/{n}")).collect();
    let options = PrefetchOptions {
        area: Some(Area::Overseas),
        l2_preload: true,
        headers: [("Accept-Encoding".to_owned(), "gzip".to_owned())].into(),
    };

    let too_big = client
        .batch(Operation::Prefetch(options.clone()))
        .batch_size(150)
        .run(urls.clone())
        .await
        .expect_err("above the per-call maximum");
    assert!(matches!(too_big, BatchError::BatchSize { max: 100, .. }), "{too_big}");

    let report = client
        .batch(Operation::Prefetch(options))
        .poll_interval(Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(200),
        })
        .run(urls)
        .await
        .expect("run");
    assert!(report.is_success());
    assert_eq!(report.count(|outcome| *outcome == UrlOutcome::Complete), 250);
    {
        let seen = stand_in.seen();
        assert!(seen.bad_signatures.is_empty(), "{:?}", seen.bad_signatures);
        assert_eq!(seen.prefetch_parameters.len(), 3, "100 per call");
        for parameters in &seen.prefetch_parameters {
            assert_eq!(parameters["Area"], "overseas");
            assert_eq!(parameters["L2Preload"], "true");
            assert_eq!(parameters["WithHeader"], r#"{"Accept-Encoding":"gzip"}"#);
        }
    }

    let tasks = client.tasks(&TaskFilter::default()).await.expect("tasks");
    assert_eq!(tasks.len(), 250, "three pages of tasks, read page after page");
}

#[tokio::test]
async fn a_refused_call_is_a_typed_error_and_is_not_retried() {
    let (stand_in, address) = StandIn::start(Config::default()).await;
    let client = quick(AlibabaCdnClient::new(Credentials::new(KEY_ID, SECRET)).expect("client"))
        .endpoint(format!("http://{address}").parse().expect("url"));
    let error = client
        .refresh(&["https://unknown.example.com/a".to_owned()], ObjectType::File, false)
        .await
        .expect_err("unknown domain");
    let AlibabaError::Api {
        status,
        code,
        request_id,
        ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!((*status, code.as_str()), (400, "InvalidDomain.NotFound"));
    assert!(!request_id.is_empty());
    assert!(!error.is_retryable());
    assert_eq!(stand_in.seen().calls, 1);

    let wrong = quick(AlibabaCdnClient::new(Credentials::new(KEY_ID, "wrong secret")).expect("client"))
        .endpoint(format!("http://{address}").parse().expect("url"));
    let error = wrong.quota().await.expect_err("bad signature");
    assert_eq!(error.code(), Some("SignatureDoesNotMatch"));
    assert!(!format!("{error} {error:?} {wrong:?}").contains("wrong secret"));
}

/// Alibaba Cloud refuses `DescribeRefreshTasks` with `Status` and no
/// `ObjectType` (and allows it 5 calls a second): a run follows its tasks by
/// id instead (`DescribeRefreshTaskById`, 10 ids a call, 30 calls a second),
/// and completes.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_follows_its_tasks_by_id_and_completes() {
    let (stand_in, address) = StandIn::start(Config::default()).await;
    let client = quick(
        AlibabaCdnClient::new(Credentials::new(KEY_ID, SECRET))
            .expect("client")
            .endpoint(format!("http://{address}").parse().expect("endpoint")),
    );
    // Many small calls, so that several task ids are followed at once.
    let urls: Vec<String> = (0..1_500)
        .map(|n| format!("https://d{}.example.com/assets/{n}.js", n % 10))
        .collect();
    let report = client
        .batch(Operation::Refresh {
            object_type: ObjectType::File,
            force: false,
        })
        .poll_interval(Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(200),
        })
        .run(urls)
        .await
        .expect("run");
    assert!(
        report.is_success(),
        "{:?}",
        report.urls.iter().find(|url| url.outcome != UrlOutcome::Complete)
    );
    {
        let seen = stand_in.seen();
        assert!(seen.refused_queries.is_empty(), "{:?}", seen.refused_queries);
        assert!(seen.actions.iter().any(|action| action == "DescribeRefreshTaskById"));
        assert!(
            !seen.actions.iter().any(|action| action == "DescribeRefreshTasks"),
            "no listing of the account's tasks"
        );
    }

    // The client refuses, without sending, what the API would refuse.
    let calls = stand_in.seen().calls;
    let filter = TaskFilter {
        status: Some(edgecache_purge::alibaba::TaskStatus::Refreshing),
        ..TaskFilter::default()
    };
    let error = client
        .tasks_page(&filter, 1, 20)
        .await
        .expect_err("ObjectType is required");
    assert!(matches!(error, AlibabaError::Invalid { .. }), "{error}");
    assert!(error.to_string().contains("ObjectType is required"), "{error}");
    let ids: Vec<String> = (0..11).map(|n| n.to_string()).collect();
    assert!(client.tasks_by_id(&ids).await.is_err(), "at most 10 ids");
    assert_eq!(stand_in.seen().calls, calls, "nothing was sent");
    let listed = client
        .tasks_page(
            &TaskFilter {
                object_type: Some("file".into()),
                ..filter
            },
            1,
            20,
        )
        .await
        .expect("with ObjectType the API answers");
    assert_eq!(listed.total_count, 0, "every task is complete");
}
