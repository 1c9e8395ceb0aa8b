//! EdgeGrid signing against the reference client's vectors, `.edgerc`
//! loading, and the middleware against a stand-in that checks signatures.

use edgecache_testkit as common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine as _;
use edgecache::edgegrid::{Credentials, CredentialsError, EdgeGridAuth, EdgeGridError, Signer};
use http::{HeaderMap, Method};

#[derive(serde::Deserialize)]
struct Vector {
    name: String,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: String,
    headers_to_sign: Vec<String>,
    max_body: usize,
    timestamp: String,
    nonce: String,
    authorization: String,
    client_token: String,
    client_secret: String,
    access_token: String,
}

#[test]
fn signatures_match_the_reference_client() {
    let vectors: Vec<Vector> =
        serde_json::from_str(include_str!("../fixtures/edgegrid_vectors.json")).expect("fixture parses");
    assert!(vectors.len() >= 10);
    for vector in vectors {
        let url = url::Url::parse(&vector.url).expect("url");
        let credentials = Credentials::new(
            url.host_str().expect("host"),
            vector.client_token,
            vector.client_secret,
            vector.access_token,
        )
        .expect("credentials")
        .with_max_body(vector.max_body)
        .with_headers_to_sign(vector.headers_to_sign);
        let mut headers = HeaderMap::new();
        for (name, value) in &vector.headers {
            headers.append(
                name.parse::<http::HeaderName>().expect("name"),
                value.parse().expect("value"),
            );
        }
        let body = base64::engine::general_purpose::STANDARD
            .decode(&vector.body)
            .expect("body");
        let method: Method = vector.method.parse().expect("method");
        let signed =
            Signer::new(credentials).authorization_at(&method, &url, &headers, &body, &vector.timestamp, &vector.nonce);
        assert_eq!(signed, vector.authorization, "{}", vector.name);
    }
}

fn edgerc(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join(".edgerc");
    std::fs::write(&path, text).expect("write");
    (directory, path)
}

#[test]
fn edgerc_values_are_read_as_the_ecosystem_writes_them() {
    let (_directory, path) = edgerc(
        "# comment\n[default]\nhost = wrong\nclient_token = x\nclient_secret = x\naccess_token = x\n\n\
         [papi]\nhost = \"https://akab-abc.luna.akamaiapis.net/\"\nclient_token = 'akab-client'\n\
         client_secret = s3cr3t=\naccess_token = akab-access\nmax-body = 8192\n\
         headers_to_sign = X-B, x-a\naccount_key = B-C-1ABCDE\n",
    );
    let credentials = Credentials::from_edgerc(&path, "papi").expect("loads");
    assert_eq!(credentials.host(), "akab-abc.luna.akamaiapis.net");
    let debug = format!("{credentials:?}");
    assert!(
        debug.contains("max_body: 8192") && debug.contains("[\"x-b\", \"x-a\"]"),
        "{debug}"
    );
    for secret in ["s3cr3t", "akab-client", "akab-access", "B-C-1ABCDE"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
}

#[test]
fn edgerc_mistakes_say_which_file_section_line_and_key() {
    let missing = Credentials::from_edgerc(std::path::Path::new("/no/such/.edgerc"), "default").expect_err("missing");
    assert!(matches!(missing, CredentialsError::Read { .. }) && missing.to_string().contains("/no/such/.edgerc"));

    let (_directory, path) = edgerc("[default]\nhost = akab-x.luna.akamaiapis.net\nclient_token = t\n");
    let error = Credentials::from_edgerc(&path, "other").expect_err("no such section");
    assert!(error.to_string().ends_with("no section [other]"), "{error}");
    let error = Credentials::from_edgerc(&path, "default").expect_err("no secret");
    assert!(
        error.to_string().contains("[default] has no `client_secret`"),
        "{error}"
    );
    assert!(error.to_string().contains(&path.display().to_string()), "{error}");

    let (_directory, path) =
        edgerc("[default]\nhost = https://akab-x.net/path\nclient_token = t\nclient_secret = s\naccess_token = a\n");
    let error = Credentials::from_edgerc(&path, "default").expect_err("a path is no host");
    assert!(error.to_string().contains(":2: [default] `host`"), "{error}");

    let (_directory, path) = edgerc(
        "[default]\nhost = akab-x.net\nclient_token = t\nclient_secret = s\naccess_token = a\nmax_body = lots\n",
    );
    let error = Credentials::from_edgerc(&path, "default").expect_err("not a number");
    assert!(
        error
            .to_string()
            .contains(":6: [default] `max_body`: \"lots\" is not a number"),
        "{error}"
    );

    let (_directory, path) = edgerc("[default]\nthis line is wrong\n");
    let error = Credentials::from_edgerc(&path, "default").expect_err("syntax");
    assert!(
        error.to_string().contains(".edgerc:2: expected `key = value`"),
        "{error}"
    );
}

/// An OPEN API stand-in: checks each request's signature, records what it saw.
#[derive(Clone)]
struct StandIn {
    signer: Arc<Signer>,
    seen: Arc<Mutex<Vec<(String, bool)>>>,
}

async fn stand_in(State(state): State<StandIn>, request: Request) -> Response {
    let url = url::Url::parse(&format!(
        "http://{}{}",
        state.signer.credentials().host(),
        request.uri()
    ))
    .expect("url");
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    let verified = common::edgegrid_verified(&state.signer, &parts, &body);
    state.seen.lock().expect("log").push((url.path().to_owned(), verified));
    let response = Response::builder();
    match url.path() {
        "/redirect" => response.status(302).header("location", "/target?hop=1"),
        "/elsewhere" => response.status(302).header("location", "http://localhost:1/other"),
        "/skewed" => {
            let detail = r#"{"detail":"Timestamp is expired or not yet valid","status":401}"#;
            return response
                .status(401)
                .header("date", "Sat, 21 Nov 2026 00:00:00 GMT")
                .body(axum::body::Body::from(detail))
                .expect("response");
        }
        _ if !verified => response.status(401),
        _ => response.status(200),
    }
    .body(axum::body::Body::from(url.query().unwrap_or("").to_owned()))
    .expect("response")
}

async fn start(account_key: Option<&str>) -> (StandIn, reqwest_middleware::ClientWithMiddleware, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let host = listener.local_addr().expect("address").to_string();
    let mut credentials = Credentials::new(&host, "akab-client", "secret=", "akab-access").expect("credentials");
    if let Some(account_key) = account_key {
        credentials = credentials.with_account_key(account_key);
    }
    let state = StandIn {
        signer: Arc::new(Signer::new(credentials.clone())),
        seen: Arc::default(),
    };
    let app = Router::new().fallback(stand_in).with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let client = reqwest_middleware::ClientBuilder::new(client)
        .with(EdgeGridAuth::new(credentials))
        .build();
    (state, client, format!("http://{host}"))
}

#[tokio::test]
async fn requests_to_the_credential_host_are_signed_and_verify() {
    let (state, client, base) = start(None).await;
    let get = client
        .get(format!("{base}/ccu/v3/objects?b=2&a=1"))
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), 200);
    let post = client
        .post(format!("{base}/ccu/v3/delete/url/production"))
        .body(vec![b'x'; 200_000]);
    assert_eq!(
        post.send().await.expect("post").status(),
        200,
        "bodies over max_body are truncated, not refused"
    );
    assert!(state.seen.lock().expect("log").iter().all(|(_, verified)| *verified));
}

#[tokio::test]
async fn other_hosts_get_no_signature_and_redirects_are_re_signed() {
    let (state, client, base) = start(None).await;
    let other_host = base.replace("127.0.0.1", "localhost");
    let response = client.get(format!("{other_host}/plain")).send().await.expect("get");
    assert_eq!(response.status(), 401, "not signed for another host");

    let followed = client.get(format!("{base}/redirect")).send().await.expect("get");
    assert_eq!(
        (followed.status().as_u16(), followed.text().await.expect("body")),
        (200, "hop=1".into())
    );
    let not_followed = client.get(format!("{base}/elsewhere")).send().await.expect("get");
    assert_eq!(
        not_followed.status(),
        302,
        "a redirect to another host is handed back, unsigned"
    );

    let seen = state.seen.lock().expect("log").clone();
    assert_eq!(
        seen,
        [
            ("/plain".to_owned(), false),
            ("/redirect".to_owned(), true),
            ("/target".to_owned(), true),
            ("/elsewhere".to_owned(), true),
        ]
    );
}

#[tokio::test]
async fn the_account_switch_key_is_added_and_signed() {
    let (state, client, base) = start(Some("B-C-1ABCDE")).await;
    let response = client
        .get(format!("{base}/papi/v1/groups?x=1"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "x=1&accountSwitchKey=B-C-1ABCDE");
    assert!(state.seen.lock().expect("log")[0].1);
}

#[tokio::test]
async fn a_timestamp_401_says_the_clock_may_be_off() {
    let (_state, client, base) = start(None).await;
    let error = client.get(format!("{base}/skewed")).send().await.expect_err("refused");
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("not a middleware error: {error}")
    };
    let skew = error.downcast_ref::<EdgeGridError>().expect("an EdgeGrid error");
    assert!(matches!(skew, EdgeGridError::ClockSkew { .. }));
    let message = skew.to_string();
    assert!(
        message.contains("clock may be off") && message.contains("Sat, 21 Nov 2026 00:00:00 GMT"),
        "{message}"
    );
}
