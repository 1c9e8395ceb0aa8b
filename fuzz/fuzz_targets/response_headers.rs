//! Whatever status and headers an origin sends, the cache answers with a
//! well-formed response and never panics, when storing and when serving:
//! `cargo +nightly fuzz run response_headers` (from the repository root).
//!
//! Input: two bytes of status, then `Name: value` lines of response headers;
//! a line `--` switches to the request's headers.
#![no_main]

use std::convert::Infallible;

use bytes::Bytes;
use edgecache::CacheMiddleware;
use edgecache::store::MemoryStore;
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use tower::{ServiceBuilder, ServiceExt};

fn headers(lines: &[u8]) -> Vec<(http::HeaderName, http::HeaderValue)> {
    lines
        .split(|&byte| byte == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&byte| byte == b':')?;
            let name = http::HeaderName::from_bytes(&line[..colon]).ok()?;
            let value = http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
            Some((name, value))
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((status, rest)) = data.split_first_chunk::<2>() else { return };
    let status = 100 + u16::from_le_bytes(*status) % 900;
    let split = rest.windows(3).position(|window| window == b"\n--").unwrap_or(rest.len());
    let response_headers = headers(&rest[..split]);
    let request_headers = headers(rest.get(split + 3..).unwrap_or_default());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let cache = CacheMiddleware::builder().store(MemoryStore::new(1 << 20)).build().expect("cache");
        let origin = tower::service_fn(move |_request: http::Request<Full<Bytes>>| {
            let mut response = http::Response::builder().status(status);
            for (name, value) in &response_headers {
                response = response.header(name, value);
            }
            let response = response.body(Full::new(Bytes::from_static(b"body"))).expect("response");
            async move { Ok::<_, Infallible>(response) }
        });
        let service = ServiceBuilder::new().layer(cache).service(origin);
        for _ in 0..2 {
            let mut request = http::Request::get("http://origin.test/r");
            for (name, value) in &request_headers {
                request = request.header(name, value);
            }
            let request = request.body(Full::default()).expect("request");
            let _ = service.clone().oneshot(request).await;
        }
    });
});
