//! What the cache reports: its counters through the `metrics` facade, read
//! back with a real recorder, and its `tracing` span per request.

use edgecache_testkit as common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use edgecache::CacheMiddleware;
use edgecache::metrics as m;
use edgecache::store::MemoryStore;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// The process's one recorder (each counting test runs in a process of its
/// own), and a lock so a test reads only its own counts (a snapshot resets
/// them).
fn recorder() -> &'static (Snapshotter, tokio::sync::Mutex<()>) {
    static RECORDER: OnceLock<(Snapshotter, tokio::sync::Mutex<()>)> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("the process's only recorder");
        (snapshotter, tokio::sync::Mutex::new(()))
    })
}

/// `name{label=value,…}` → value, for the cache's series counted since the
/// last call.
fn counts() -> BTreeMap<String, f64> {
    let mut counts = BTreeMap::new();
    for (key, _, _, value) in recorder().0.snapshot().into_vec() {
        let key = key.key();
        if !key.name().starts_with("edgecache_cache_") {
            continue;
        }
        let labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}={}", label.key(), label.value()))
            .collect();
        let series = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        let value = match value {
            DebugValue::Counter(count) => count as f64,
            DebugValue::Gauge(value) => value.into_inner(),
            DebugValue::Histogram(values) => values.len() as f64,
        };
        *counts.entry(series).or_insert(0.0) += value;
    }
    counts
}

fn count(counts: &BTreeMap<String, f64>, series: &str) -> f64 {
    counts.get(series).copied().unwrap_or(0.0)
}

/// An origin: `/fresh` (max-age=60), `/validated` (max-age=0 and an ETag,
/// 304 to it), `/flaky` (stale at once, with an ETag; then 500s),
/// `/slow` (200 ms).
async fn origin() -> String {
    let flaky = Arc::new(Mutex::new(0u32));
    let app = Router::new()
        .route("/fresh", get(|| async { ([("cache-control", "max-age=60")], "fresh") }))
        .route(
            "/validated",
            get(|headers: HeaderMap| async move {
                if headers.get("if-none-match").is_some_and(|tag| tag == "\"v1\"") {
                    return (
                        StatusCode::NOT_MODIFIED,
                        [("cache-control", "max-age=0"), ("etag", "\"v1\"")],
                        "",
                    );
                }
                (
                    StatusCode::OK,
                    [("cache-control", "max-age=0"), ("etag", "\"v1\"")],
                    "validated",
                )
            }),
        )
        .route(
            "/flaky",
            get(move || {
                let flaky = Arc::clone(&flaky);
                async move {
                    let mut calls = flaky.lock().unwrap();
                    *calls += 1;
                    if *calls == 1 {
                        (
                            StatusCode::OK,
                            [("cache-control", "max-age=0"), ("etag", "\"f1\"")],
                            "first",
                        )
                    } else {
                        (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [("cache-control", "no-store"), ("etag", "\"f2\"")],
                            "down",
                        )
                    }
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                ([("cache-control", "max-age=60")], "slow")
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

/// Every label value the cache uses: none is a URL, a key or a header.
const LABEL_VALUES: &[&str] = &[
    "memory",
    "sqlite",
    "redis",
    "custom",
    "read",
    "write",
    "remove",
    "invalidate",
    "key_secret",
    "not_modified",
    "modified",
    "stale_while_revalidate",
    "stale_if_error",
    "max_stale",
    "only_if_cached",
    "bypass",
    "method",
    "request",
];

fn assert_bounded(counts: &BTreeMap<String, f64>) {
    for series in counts.keys() {
        let Some((_, labels)) = series.split_once('{') else {
            continue;
        };
        for label in labels.trim_end_matches('}').split(',') {
            let value = label.split_once('=').map_or("", |(_, value)| value);
            assert!(LABEL_VALUES.contains(&value), "unexpected label value in {series}");
        }
    }
}

#[tokio::test]
async fn hits_misses_stores_revalidations_and_stale_answers_are_counted() {
    // Reads the process's one recorder: alone in one.
    if edgecache_testkit::in_own_process(
        module_path!(),
        "hits_misses_stores_revalidations_and_stale_answers_are_counted",
    ) {
        return;
    }
    let _turn = recorder().1.lock().await;
    counts();
    let origin = origin().await;
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::new(16 << 20))
        .stale_if_error(Duration::from_secs(600))
        .build()
        .unwrap();
    let client = common::client(&cache);

    common::get(&client, &format!("{origin}/fresh")).await;
    common::get(&client, &format!("{origin}/fresh")).await;
    let after_fresh = counts();
    assert_eq!(count(&after_fresh, m::MISSES), 1.0, "{after_fresh:?}");
    assert_eq!(count(&after_fresh, m::HITS), 1.0, "{after_fresh:?}");
    assert_eq!(
        count(&after_fresh, &format!("{}{{store=memory}}", m::STORED)),
        1.0,
        "{after_fresh:?}"
    );

    common::get(&client, &format!("{origin}/validated")).await;
    common::get(&client, &format!("{origin}/validated")).await;
    let after_validated = counts();
    assert_eq!(count(&after_validated, m::MISSES), 1.0, "{after_validated:?}");
    assert_eq!(
        count(
            &after_validated,
            &format!("{}{{result=not_modified}}", m::REVALIDATIONS)
        ),
        1.0,
        "{after_validated:?}"
    );

    common::get(&client, &format!("{origin}/flaky")).await;
    let (x_cache, body) = common::get(&client, &format!("{origin}/flaky")).await;
    assert_eq!((x_cache.as_str(), body.as_str()), ("STALE", "first"));
    let after_flaky = counts();
    assert_eq!(
        count(&after_flaky, &format!("{}{{cause=stale_if_error}}", m::STALE)),
        1.0,
        "{after_flaky:?}"
    );
    assert_eq!(
        count(&after_flaky, &format!("{}{{result=modified}}", m::REVALIDATIONS)),
        0.0,
        "an origin that failed confirmed nothing: {after_flaky:?}"
    );
    for counts in [after_fresh, after_validated, after_flaky] {
        assert_bounded(&counts);
    }
}

#[tokio::test]
async fn coalesced_waiters_and_stale_while_revalidate_answers_are_counted() {
    // Reads the process's one recorder: alone in one.
    if edgecache_testkit::in_own_process(
        module_path!(),
        "coalesced_waiters_and_stale_while_revalidate_answers_are_counted",
    ) {
        return;
    }
    let _turn = recorder().1.lock().await;
    counts();
    let origin = origin().await;
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::new(16 << 20))
        .stale_while_revalidate(Duration::from_secs(600))
        .build()
        .unwrap();
    let client = common::client(&cache);
    let url = format!("{origin}/slow");
    let requests: Vec<_> = (0..5).map(|_| common::get(&client, &url)).collect();
    futures_util::future::join_all(requests).await;
    let concurrent = counts();
    let (misses, coalesced) = (count(&concurrent, m::MISSES), count(&concurrent, m::COALESCED));
    assert_eq!(misses + coalesced + count(&concurrent, m::HITS), 5.0, "{concurrent:?}");
    assert!(coalesced >= 1.0 && misses >= 1.0, "{concurrent:?}");

    common::get(&client, &format!("{origin}/validated")).await;
    let (x_cache, _) = common::get(&client, &format!("{origin}/validated")).await;
    assert_eq!(x_cache, "STALE");
    let refreshed = counts();
    assert_eq!(
        count(&refreshed, &format!("{}{{cause=stale_while_revalidate}}", m::STALE)),
        1.0,
        "{refreshed:?}"
    );
    assert_bounded(&refreshed);
}

#[tokio::test]
async fn a_bounded_memory_store_counts_its_evictions() {
    // Reads the process's one recorder: alone in one.
    if edgecache_testkit::in_own_process(module_path!(), "a_bounded_memory_store_counts_its_evictions") {
        return;
    }
    let _turn = recorder().1.lock().await;
    counts();
    let origin = origin().await;
    // Room for a few small entries only.
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::new(4096))
        .build()
        .unwrap();
    let client = common::client(&cache);
    for n in 0..40 {
        common::get(&client, &format!("{origin}/fresh?n={n}")).await;
    }
    let after = counts();
    assert!(
        count(&after, &format!("{}{{store=memory}}", m::EVICTIONS)) >= 1.0,
        "{after:?}"
    );
    assert_eq!(
        count(&after, &format!("{}{{store=memory}}", m::STORED)),
        40.0,
        "{after:?}"
    );
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_failing_store_counts_its_errors_and_opens_the_breaker_gauge() {
    // Reads the process's one recorder: alone in one.
    if edgecache_testkit::in_own_process(
        module_path!(),
        "a_failing_store_counts_its_errors_and_opens_the_breaker_gauge",
    ) {
        return;
    }
    let _turn = recorder().1.lock().await;
    counts();
    let origin = origin().await;
    // A real Redis client, with nothing listening where it points.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = edgecache::store::RedisStore::open(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap();
    let cache = CacheMiddleware::builder().store(store).build().unwrap();
    let client = common::client(&cache);
    let (x_cache, body) = common::get(&client, &format!("{origin}/fresh")).await;
    assert_eq!(
        (x_cache.as_str(), body.as_str()),
        ("MISS", "fresh"),
        "the request still succeeds"
    );
    let after = counts();
    let errors: f64 = after
        .iter()
        .filter(|(series, _)| series.starts_with(m::STORE_ERRORS) && series.contains("store=redis"))
        .map(|(_, count)| count)
        .sum();
    assert!(errors >= 1.0, "{after:?}");
    assert_eq!(
        count(&after, &format!("{}{{store=redis}}", m::BREAKER_OPEN)),
        1.0,
        "{after:?}"
    );
    assert_bounded(&after);
}

/// One closed span: its name and fields.
#[derive(Debug, Clone, Default)]
struct Closed {
    name: String,
    fields: BTreeMap<String, String>,
}

/// A subscriber layer that keeps the fields of every span it sees close.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Closed>>>, Arc<Mutex<BTreeMap<u64, Closed>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> tracing_subscriber::Layer<S>
    for Spans
{
    fn on_new_span(
        &self,
        attributes: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut span = Closed {
            name: attributes.metadata().name().to_owned(),
            ..Closed::default()
        };
        attributes.record(&mut Fields(&mut span.fields));
        self.1.lock().unwrap().insert(id.into_u64(), span);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(span) = self.1.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }

    fn on_close(&self, id: tracing::span::Id, _: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = self.1.lock().unwrap().remove(&id.into_u64()) {
            self.0.lock().unwrap().push(span);
        }
    }
}

#[tokio::test]
async fn each_request_runs_in_a_span_saying_what_the_cache_decided_with_credentials_redacted() {
    use tracing_subscriber::layer::SubscriberExt;
    // Its requests count too: it takes its turn like the others.
    let _turn = recorder().1.lock().await;
    let spans = Spans::default();
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let origin = origin().await;
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::new(16 << 20))
        .build()
        .unwrap();
    let client = common::client(&cache);
    let url = format!("{origin}/fresh?api_key=hunter2-secret");
    common::get(&client, &url).await;
    common::get(&client, &url).await;
    let closed: Vec<Closed> = spans
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|span| span.name == "edgecache.request")
        .cloned()
        .collect();
    assert_eq!(closed.len(), 2, "{closed:#?}");
    let field = |index: usize, name: &str| closed[index].fields.get(name).cloned().unwrap_or_default();
    assert_eq!(
        (field(0, "decision"), field(0, "outcome"), field(0, "status")),
        ("fetch".into(), "MISS".into(), "200".into())
    );
    assert_eq!(
        (field(1, "decision"), field(1, "outcome")),
        ("hit".into(), "HIT".into())
    );
    assert_eq!(field(0, "key"), field(1, "key"), "one key for both");
    assert!(!field(0, "key").is_empty());
    assert!(field(1, "store_us").parse::<u64>().is_ok(), "{closed:#?}");
    for span in &closed {
        let shown = format!("{:?}", span.fields);
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(
            span.fields
                .get("url")
                .is_some_and(|url| url.contains("api_key=REDACTED")),
            "{shown}"
        );
    }
}
