//! The dashboard at `/ui`, in a real headless Chromium against a real
//! `edgecache serve` and origin.
//!
//! `EDGECACHE_SCREENSHOTS=$PWD/crates/server/docs cargo test -p edgecache-cli --test it dashboard::`
//! also saves the screenshots edgecache-server's README shows (`crates/server/docs/screenshots.sh`).

use edgecache_testkit as common;

use axum::Router;
use axum::routing::get;
use common::browser::Browser;
use common::versions_server::{ContentOrigin, VersionsServer};
use http::Method;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-0123456789";
const MAPS: &str = "maps-token-0123456789";

/// A server whose token file has an admin token (every group) and one for
/// the group `maps`.
async fn server_with_tokens(data: &std::path::Path) -> VersionsServer {
    let tokens = data.join("tokens.txt");
    std::fs::write(&tokens, format!("{ADMIN} *\n{MAPS} maps\n")).unwrap();
    let args = ["--allow-private-origins", "--token-file", tokens.to_str().unwrap()];
    let mut server = VersionsServer::start(&data.join("data"), &args, &[]).await;
    server.token = Some(ADMIN.into());
    server
}

async fn ready_versions(server: &VersionsServer, rid: &str, count: usize) -> Vec<Value> {
    server
        .wait_for_versions(rid, "ready versions", |versions| {
            versions.iter().filter(|version| version["status"] == "ready").count() >= count
        })
        .await
}

async fn version(server: &VersionsServer, rid: &str, vid: &str) -> Value {
    let (status, version) = server
        .call(Method::GET, &format!("/v1/resources/{rid}/versions/{vid}"), None)
        .await;
    assert_eq!(status, 200, "{version}");
    version
}

async fn log_in(browser: &Browser, server: &VersionsServer, token: &str) {
    browser.client.goto(&server.url("/ui")).await.unwrap();
    browser.type_into("#login:not([hidden]) #token", token).await;
    browser.click("#login button[type=submit]").await;
    browser.find("table#resources").await;
}

#[tokio::test]
async fn an_operator_finds_pins_tags_fetches_and_deletes_a_resource_in_the_browser() {
    let Some(browser) = Browser::start().await else { return };
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let mut server = server_with_tokens(data.path()).await;
    origin.set("report", "first report");
    origin.set("other", "other");
    let rid = server
        .register(json!({"url": origin.url("/doc/report"), "group": "maps", "description": "the daily report"}))
        .await;
    for index in 0..60 {
        server
            .register(json!({"url": origin.url(&format!("/doc/other?n={index}")), "group": "maps"}))
            .await;
    }
    let hidden = server
        .register(json!({"url": origin.url("/doc/report?secret=1"), "group": "finance"}))
        .await;
    ready_versions(&server, &rid, 1).await;

    // Log in with the group's token: the token is asked for once.
    log_in(&browser, &server, MAPS).await;
    let stored: Value = browser
        .client
        .execute("return sessionStorage.getItem('edgecache.token')", Vec::new())
        .await
        .unwrap();
    assert_eq!(stored, MAPS);
    // 62 resources, 61 of them visible: two pages of 50.
    let pager = browser.text(".pager").await;
    assert!(pager.contains("1–50 of 61"), "{pager}");
    browser.screenshot("dashboard-resources").await;

    // Find the resource: the other group's one with the same path is not there.
    browser.type_into("input[name=search]", "/doc/report").await;
    browser.click("#filters button[type=submit]").await;
    browser
        .until(
            "one search result",
            "return document.querySelectorAll('#resources tbody tr').length === 1",
        )
        .await;
    let table = browser.text("#resources").await;
    assert!(
        table.contains("/doc/report") && table.contains("maps") && !table.contains("finance"),
        "{table}"
    );
    browser.click("#resources a").await;
    browser.find("li.version[data-status=ready]").await;
    assert!(browser.text("#resource").await.contains("the daily report"));
    let (status, _) = server.call(Method::GET, &format!("/v1/resources/{hidden}"), None).await;
    assert_eq!(status, 200, "the admin token sees the other group");
    browser
        .client
        .goto(&server.url(&format!("/ui/resources/{hidden}")))
        .await
        .unwrap();
    browser
        .until(
            "the other group's resource refused",
            "return /no such resource/.test(document.getElementById('flash').textContent)",
        )
        .await;
    browser.client.back().await.unwrap();
    browser.find("li.version[data-status=ready]").await;

    // Pin the version for 1 h.
    let vid = browser
        .find("li.version")
        .await
        .attr("data-version")
        .await
        .unwrap()
        .expect("a version id");
    browser
        .find("li.version select.pin-for")
        .await
        .select_by_value("3600")
        .await
        .unwrap();
    browser.click("li.version button[data-action=pin]").await;
    browser.find("li.version .pinned").await;
    let pinned = version(&server, &rid, &vid).await;
    assert_eq!(pinned["pinned"], true);
    let until: jiff::Timestamp = pinned["pinned_until"].as_str().unwrap().parse().unwrap();
    let left = until.duration_since(jiff::Timestamp::now()).as_secs();
    assert!((3500..=3600).contains(&left), "pinned for {left} s");

    // Tag it.
    browser.type_into("li.version input.tag-name", "golden").await;
    browser.click("li.version button[data-action=tag]").await;
    browser.find("li.version .tag").await;
    assert!(browser.text("li.version .tags").await.contains("golden"));
    let tagged = version(&server, &rid, &vid).await;
    assert_eq!(tagged["tags"], json!(["golden"]));

    // A refused tag shows the API's own message.
    browser.type_into("li.version input.tag-name", "not a tag").await;
    browser.click("li.version button[data-action=tag]").await;
    browser
        .until(
            "the refusal",
            "return document.getElementById('flash').className === 'error'",
        )
        .await;
    let refusal = browser.text("#flash").await;
    assert!(refusal.contains("[invalid]"), "{refusal}");

    // Fetch now: the origin changed, and the new version appears.
    origin.set("report", "second report");
    browser.click("button[data-action=fetch]").await;
    browser
        .until(
            "the new version",
            "return document.querySelectorAll('li.version[data-status=ready]').length === 2",
        )
        .await;
    let newest = browser
        .find("li.version")
        .await
        .attr("data-version")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(newest, vid, "the newest version comes first");
    browser.screenshot("dashboard-resource").await;

    // Delete: a confirmation first; a pinned version refuses without force.
    browser.click("button[data-action=delete]").await;
    browser.find("#confirm-delete:not([hidden])").await;
    browser.click("button[data-action=confirm-delete]").await;
    browser
        .until(
            "the refusal",
            "return /pinned/.test(document.getElementById('flash').textContent)",
        )
        .await;
    assert_eq!(
        server.call(Method::GET, &format!("/v1/resources/{rid}"), None).await.0,
        200
    );
    browser.click("#force-delete").await;
    browser.click("button[data-action=confirm-delete]").await;
    browser.find("table#resources").await;
    assert_eq!(
        server.call(Method::GET, &format!("/v1/resources/{rid}"), None).await.0,
        404
    );

    // The server page counts what happened, from the recorder /metrics reads.
    browser.client.goto(&server.url("/ui/server")).await.unwrap();
    let requests = browser.text("table#requests").await;
    assert!(requests.contains("2xx") && requests.contains("4xx"), "{requests}");
    let fetches = browser.text("table#fetches").await;
    assert!(fetches.contains("new_version"), "{fetches}");
    assert!(browser.text("#disk").await.contains("free"));
    browser.screenshot("dashboard-server").await;

    // Logging out forgets the token.
    browser.click("#logout").await;
    browser.find("#login:not([hidden])").await;
    let stored: Value = browser
        .client
        .execute("return sessionStorage.getItem('edgecache.token')", Vec::new())
        .await
        .unwrap();
    assert_eq!(stored, Value::Null);
    browser.client.close().await.unwrap();
    server.token = None;
}

/// Payloads that run script if any value reaches the page unescaped.
const SCRIPT: &str = "<script>window.__xss=1</script>";
const ATTRIBUTE: &str = "\"onmouseover=\"window.__xss=1";
const IMAGE: &str = "<img src=x onerror=window.__xss=1>";

/// An origin whose answers carry the payloads in headers and cache tags,
/// and one path that always fails.
async fn hostile_origin() -> std::net::SocketAddr {
    let app = Router::new()
        .route(
            "/evil/{*rest}",
            get(|| async {
                (
                    [
                        ("x-evil", format!("{ATTRIBUTE}>{SCRIPT}{IMAGE}")),
                        ("edge-cache-tag", format!("{SCRIPT},{ATTRIBUTE}")),
                        ("etag", format!("\"{ATTRIBUTE}\"")),
                    ],
                    "evil body",
                )
            }),
        )
        .route(
            "/fail/{*rest}",
            get(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, SCRIPT) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// Hovers over every element: that would fire an injected handler.
async fn hover_everything(browser: &Browser) {
    browser
        .client
        .execute(
            "document.querySelectorAll('*').forEach((element) => element.dispatchEvent(new MouseEvent('mouseover', {bubbles: true})))",
            Vec::new(),
        )
        .await
        .unwrap();
}

/// That nothing injected runs or is even in the document as markup.
async fn assert_inert(browser: &Browser, page: &str) {
    let checks = [
        ("no payload ran", "return window.__xss === undefined"),
        (
            "no injected handler attribute",
            "return document.querySelectorAll('[onmouseover],[onerror],[onclick]').length === 0",
        ),
        ("no injected script element", "return document.scripts.length === 1"),
        ("no injected image", "return document.images.length === 0"),
        (
            "no script link",
            "return document.querySelectorAll('a[href^=\"javascript:\"]').length === 0",
        ),
    ];
    for (what, script) in checks {
        let value = browser.client.execute(script, Vec::new()).await.unwrap();
        assert_eq!(value, true, "{page}: {what}");
    }
}

#[tokio::test]
async fn values_from_origins_and_users_are_shown_as_text_and_never_run() {
    let Some(browser) = Browser::start().await else { return };
    let data = tempfile::tempdir().unwrap();
    let server = server_with_tokens(data.path()).await;
    let origin = hostile_origin().await;
    let payload_path = format!("{SCRIPT}{ATTRIBUTE}");
    let evil = server
        .register(json!({
            "url": format!("http://{origin}/evil/{payload_path}?q={ATTRIBUTE}"),
            "group": "maps",
            "headers": {"x-note": format!("{ATTRIBUTE}>{SCRIPT}")},
            "description": format!("{SCRIPT}{IMAGE}{ATTRIBUTE}"),
            "link": "javascript:window.__xss=1",
        }))
        .await;
    let failing = server
        .register(json!({"url": format!("http://{origin}/fail/{payload_path}"), "group": "maps"}))
        .await;
    ready_versions(&server, &evil, 1).await;
    server
        .wait_for_versions(&failing, "a failed fetch", |versions| {
            versions.iter().any(|version| version["status"] == "failed")
        })
        .await;

    log_in(&browser, &server, ADMIN).await;
    assert_inert(&browser, "resources").await;
    let table = browser.text("#resources").await;
    assert!(table.contains("the origin answered 500"), "{table}");

    browser
        .client
        .goto(&server.url(&format!("/ui/resources/{evil}")))
        .await
        .unwrap();
    browser.find("li.version").await;
    browser.click("details.headers summary").await;
    hover_everything(&browser).await;
    assert_inert(&browser, "resource").await;
    let shown = browser.text("main").await;
    for payload in [SCRIPT, IMAGE, "onmouseover=\"window.__xss=1"] {
        assert!(shown.contains(payload), "{payload} is shown as text:\n{shown}");
    }
    assert!(
        shown.contains("javascript:window.__xss=1"),
        "the link is shown, not linked"
    );

    browser
        .client
        .goto(&server.url(&format!("/ui/resources/{failing}")))
        .await
        .unwrap();
    browser.find("li.version[data-status=failed] .error").await;
    assert_inert(&browser, "failed resource").await;
    browser.client.close().await.unwrap();
}

#[tokio::test]
async fn pages_forbid_inline_script_and_framing_and_links_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    origin.set("doc", "content");
    let server = server_with_tokens(data.path()).await;
    let rid = server
        .register(json!({"url": origin.url("/doc/doc"), "group": "maps"}))
        .await;
    let http = reqwest::Client::new();
    for path in [
        "/ui",
        "/ui/server",
        &format!("/ui/resources/{rid}"),
        "/ui/app.js",
        "/ui/part/resources",
    ] {
        let response = http.get(server.url(path)).bearer_auth(ADMIN).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let policy = header("content-security-policy");
        assert!(
            policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"),
            "{path}: {policy}"
        );
        assert!(policy.contains("frame-ancestors 'none'"), "{path}: {policy}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
    }
    // The shells hold no data; the fragments need the token.
    let part = http.get(server.url("/ui/part/resources")).send().await.unwrap();
    assert_eq!(part.status(), 401);
    let shell = http.get(server.url("/ui")).send().await.unwrap().text().await.unwrap();
    assert!(!shell.contains("/doc/doc"), "{shell}");
    // A link (a GET) can't fetch, pin, tag or delete.
    for path in [
        format!("/v1/resources/{rid}/fetch"),
        format!("/v1/resources/{rid}/versions/x/pin"),
    ] {
        let response = http.get(server.url(&path)).bearer_auth(ADMIN).send().await.unwrap();
        assert_eq!(response.status(), 405, "GET {path}");
    }
}

/// The purges page: each purge with who, why, what and its lines, a
/// filter by object, and objects that carry script shown as text.
#[tokio::test]
async fn the_purges_page_shows_the_history_and_never_runs_what_objects_carry() {
    use edgecache_testkit::stand_ins::cloudflare as cloudflare_stand_in;
    let Some(browser) = Browser::start().await else { return };
    let data = tempfile::tempdir().unwrap();
    let cloudflare = cloudflare_stand_in::StandIn::start().await;
    let targets = data.path().join("edgecache.toml");
    std::fs::write(
        &targets,
        format!(
            "[[target]]\nkind = \"cloudflare\"\nzone = \"{}\"\napi_base = \"{}\"\n",
            cloudflare_stand_in::ZONE,
            cloudflare.api_base()
        ),
    )
    .unwrap();
    let tokens = data.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{ADMIN} * purge\n")).unwrap();
    let args = [
        "--token-file",
        tokens.to_str().unwrap(),
        "--purge-targets",
        targets.to_str().unwrap(),
    ];
    let mut server = VersionsServer::start(
        &data.path().join("data"),
        &args,
        &[("CLOUDFLARE_API_TOKEN", cloudflare_stand_in::TOKEN)],
    )
    .await;
    server.token = Some(ADMIN.into());
    let purge = |body: Value| {
        let server = &server;
        async move {
            let (status, queued) = server.call(Method::POST, "/v1/purges", Some(body)).await;
            assert_eq!(status, 202, "{queued}");
            let id = queued["id"].as_str().unwrap().to_owned();
            for _ in 0..200 {
                let (_, purge) = server.call(Method::GET, &format!("/v1/purges/{id}"), None).await;
                if purge["status"] == "done" {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("purge {id} did not finish");
        }
    };
    purge(json!({"kind": "tag", "objects": [SCRIPT, ATTRIBUTE]})).await;
    purge(json!({"kind": "url", "objects": ["https://www.example.com/app.css"]})).await;

    browser.client.goto(&server.url("/ui/purges")).await.unwrap();
    browser.type_into("#login:not([hidden]) #token", ADMIN).await;
    browser.click("#login button[type=submit]").await;
    browser.find("table#purges").await;
    let table = browser.text("#purges").await;
    for expected in [
        SCRIPT,
        "onmouseover=\"window.__xss=1",
        "https://www.example.com/app.css",
        "tokens.txt:1",
        "cloudflare",
    ] {
        assert!(table.contains(expected), "{expected} is shown:\n{table}");
    }
    hover_everything(&browser).await;
    assert_inert(&browser, "purges").await;

    // The filter keeps the purges of one object.
    browser
        .type_into("#purge-filter input[name=object]", "https://www.example.com/app.css")
        .await;
    browser.click("#purge-filter button[type=submit]").await;
    browser
        .until(
            "one purge shown",
            "return document.querySelectorAll('#purges tbody tr[data-id]').length === 1",
        )
        .await;
    let table = browser.text("#purges").await;
    assert!(!table.contains(SCRIPT), "the other purge is filtered out:\n{table}");
    browser.client.close().await.unwrap();
}
