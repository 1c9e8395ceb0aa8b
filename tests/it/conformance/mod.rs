//! RFC 9111 (HTTP Caching) and RFC 9211 (Cache-Status), checked against a
//! real origin on 127.0.0.1. Each test names the section it checks.
//!
//! The origin answers `/PATH?h=Name:%20value&h=…&status=N` with those
//! headers and status, and the body `PATH #COUNT`; a path containing `304`
//! answers any `If-None-Match` with a `304` that echoes it in
//! `Seen-If-None-Match`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use edgecache::store::MemoryStore;
use edgecache::{CacheInfo, CacheMiddleware, ExpireAfter};
use reqwest_middleware::ClientWithMiddleware;

mod freshness;
mod storing;
mod validation;

type Counts = Arc<Mutex<Vec<(String, String)>>>;

struct Origin {
    base: String,
    seen: Counts,
}

impl Origin {
    async fn start() -> Origin {
        let seen = Counts::default();
        let app = Router::new().fallback(answer).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Origin { base, seen }
    }

    /// A URL whose response carries `headers` (`Name: value`) and `status`.
    fn url(&self, path: &str, status: u16, headers: &[&str]) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("status", &status.to_string());
        for header in headers {
            query.append_pair("h", header);
        }
        format!("{}{path}?{}", self.base, query.finish())
    }

    fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .expect("log")
            .iter()
            .filter(|(seen, _)| seen == path)
            .count()
    }

    fn methods(&self, path: &str) -> Vec<String> {
        let seen = self.seen.lock().expect("log");
        seen.iter()
            .filter(|(seen, _)| seen == path)
            .map(|(_, method)| method.clone())
            .collect()
    }
}

async fn answer(State(seen): State<Counts>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let count = {
        let mut seen = seen.lock().expect("log");
        seen.push((path.clone(), request.method().to_string()));
        seen.iter().filter(|(other, _)| *other == path).count()
    };
    let mut response = Response::builder();
    let mut status = 200;
    for (name, value) in url::form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes()) {
        match &*name {
            "status" => status = value.parse().expect("status"),
            "h" => {
                let (name, value) = value.split_once(':').expect("Name: value");
                response = response.header(name.trim(), value.trim());
            }
            _ => {}
        }
    }
    if let Some(sent) = request.headers().get("if-none-match")
        && path.contains("304")
    {
        // Says what the cache sent, so tests can check its validators.
        return response
            .status(304)
            .header("seen-if-none-match", sent)
            .body(Body::empty())
            .expect("response");
    }
    response
        .status(status)
        .body(Body::from(format!("{path} #{count}")))
        .expect("response")
}

/// Redirects are not followed: the tests look at the 3xx themselves.
fn client_with(cache: CacheMiddleware) -> ClientWithMiddleware {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    reqwest_middleware::ClientBuilder::new(client).with(cache).build()
}

fn private() -> ClientWithMiddleware {
    client_with(
        CacheMiddleware::builder()
            .store(MemoryStore::default())
            .build()
            .expect("cache"),
    )
}

fn shared() -> ClientWithMiddleware {
    client_with(
        CacheMiddleware::builder()
            .store(MemoryStore::default())
            .shared(true)
            .build()
            .expect("cache"),
    )
}

/// Sends a GET with the given request headers; `(x-cache, body, response)`.
async fn fetch(
    client: &ClientWithMiddleware,
    url: &str,
    headers: &[(&str, &str)],
) -> (String, String, http::HeaderMap, CacheInfo) {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let head = response.headers().clone();
    let info = response.extensions().get::<CacheInfo>().expect("info").clone();
    let x_cache = head["x-cache"].to_str().expect("ascii").to_owned();
    (x_cache, response.text().await.expect("body"), head, info)
}

const OLD: &str = "Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT";
