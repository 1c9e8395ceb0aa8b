//! `VersionsMiddleware`: answers like the origin, per-request selection, each user's credentials apart.

use super::*;

#[tokio::test]
async fn the_middleware_answers_like_the_origin_with_the_version_header() {
    let (_dir, origin, server) = started().await;
    origin.set("mw", "body,through,the,server\n");
    let middleware = VersionsMiddleware::new(client(&server))
        .selection(Selection::new().wait(Duration::from_secs(30)))
        .only(|url| url.path().starts_with("/doc/"));
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build();

    let direct = reqwest::get(origin.url("/doc/mw")).await.unwrap();
    let direct_type = direct.headers()["content-type"].clone();
    let direct_body = direct.bytes().await.unwrap();
    let before = origin.hits("/doc/mw");
    let through = http.get(origin.url("/doc/mw")).send().await.unwrap();
    assert_eq!(through.status(), 200);
    assert!(through.headers().contains_key("x-edgecache-version"));
    assert_eq!(through.headers()["content-type"], direct_type);
    assert_eq!(
        through.headers()["etag"],
        "\"body-through-the-server-\"",
        "the origin's own ETag"
    );
    assert_eq!(through.url().as_str(), origin.url("/doc/mw"));
    assert_eq!(through.bytes().await.unwrap(), direct_body, "byte-identical");
    // A second GET is a version the server holds: no new origin request,
    // and one request to the server (the resource is remembered, and the
    // version's metadata comes with its body).
    let asked = server_requests(&server).await;
    let again = http.get(origin.url("/doc/mw")).send().await.unwrap();
    assert_eq!(again.bytes().await.unwrap(), direct_body);
    assert_eq!(origin.hits("/doc/mw"), before + 1);
    assert_eq!(server_requests(&server).await - asked, 1, "requests to the server");

    // Other URLs and methods go straight to the origin.
    origin.set("skip", "direct");
    let plain = http.get(origin.url("/plain/skip")).send().await.unwrap();
    assert!(!plain.headers().contains_key("x-edgecache-version"));
    let posted = http.post(origin.url("/doc/mw")).send().await.unwrap();
    assert!(!posted.headers().contains_key("x-edgecache-version"));
    assert_eq!(origin.hits("/plain/skip"), 1);
}

#[tokio::test]
async fn a_request_extension_overrides_the_middleware_selection() {
    let (_dir, origin, server) = started().await;
    origin.set("sel", "one");
    let versions = client(&server);
    let resource = versions
        .resource(Method::GET, origin.url("/plain/sel"))
        .register()
        .await
        .unwrap();
    let first = ready_versions(&resource, 1).await[0].id.clone();
    resource.version(first.clone()).pin(None).await.unwrap();
    origin.set("sel", "two");
    resource.fetch_now().await.unwrap();
    ready_versions(&resource, 2).await;

    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(VersionsMiddleware::new(versions))
        .build();
    let newest = http.get(origin.url("/plain/sel")).send().await.unwrap();
    assert_eq!(newest.text().await.unwrap(), "two");
    let pinned = http
        .get(origin.url("/plain/sel"))
        .with_extension(Selection::new().prefer_pinned())
        .send()
        .await
        .unwrap();
    assert_eq!(pinned.headers()["x-edgecache-version"], first.as_str());
    assert_eq!(pinned.text().await.unwrap(), "one");
}

#[tokio::test]
async fn the_middleware_keeps_each_users_credentials_apart() {
    let (_dir, origin, server) = started().await;
    origin.set("private", "per user");
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(VersionsMiddleware::new(client(&server)).selection(Selection::new().wait(Duration::from_secs(30))))
        .build();
    let mut versions = Vec::new();
    for user in ["alice-secret", "bob-secret", "alice-secret"] {
        let response = http
            .get(origin.url("/doc/private"))
            .bearer_auth(user)
            .send()
            .await
            .unwrap();
        versions.push(response.headers()["x-edgecache-version"].to_str().unwrap().to_owned());
        assert_eq!(response.text().await.unwrap(), "per user");
    }
    assert_ne!(versions[0], versions[1], "two users, two resources");
    assert_eq!(versions[0], versions[2]);
    let seen: Vec<String> = origin
        .seen("/doc/private")
        .iter()
        .map(|headers| headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        seen,
        ["Bearer alice-secret", "Bearer bob-secret"],
        "each fetched with its own credentials"
    );
}
