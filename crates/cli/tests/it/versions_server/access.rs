//! Who may do what, and what the API says back: tokens, private origins, bad input, metrics and the API description.

use super::*;

#[tokio::test]
async fn tokens_see_only_their_groups() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    origin.set("g", "grouped");
    let tokens = data.path().join("tokens.txt");
    std::fs::write(
        &tokens,
        "# who sees what\nmaps-token-0123456789 maps\nadmin-token-0123456789 *\n",
    )
    .unwrap();
    let args = ["--allow-private-origins", "--token-file", tokens.to_str().unwrap()];
    let mut server = VersionsServer::start(&data.path().join("data"), &args, &[]).await;

    assert_eq!(server.call(Method::GET, "/v1/resources", None).await.0, 401);
    assert_eq!(server.call(Method::GET, "/metrics", None).await.0, 401);
    assert_eq!(server.call(Method::GET, "/healthz", None).await.0, 200);
    server.token = Some("wrong-token-0123456789".into());
    let (status, error) = server.call(Method::GET, "/v1/resources", None).await;
    assert_eq!((status, error["error"]["code"].as_str()), (401, Some("unauthorized")));

    server.token = Some("admin-token-0123456789".into());
    let secret = server
        .register(json!({"url": origin.url("/plain/g"), "group": "finance"}))
        .await;
    server.token = Some("maps-token-0123456789".into());
    let mine = server
        .register(json!({"url": origin.url("/plain/g"), "group": "maps"}))
        .await;
    let (status, _) = server
        .call(
            Method::PUT,
            "/v1/resources",
            Some(json!({"url": origin.url("/plain/g"), "group": "finance"})),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        server
            .call(Method::GET, &format!("/v1/resources/{secret}"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        server
            .call(Method::GET, &format!("/v1/resources/{secret}/content"), None)
            .await
            .0,
        404
    );
    let (_, list) = server.call(Method::GET, "/v1/resources", None).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["id"], mine.as_str());
    assert_eq!(server.call(Method::GET, "/openapi.json", None).await.0, 200);
}

#[tokio::test]
async fn without_a_token_the_server_refuses_anything_but_loopback() {
    let data = tempfile::tempdir().unwrap();
    let run = common::edgecache([
        "serve",
        "--data",
        data.path().to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
    ])
    .await;
    assert!(!run.success);
    assert!(run.stderr.contains("without authentication"), "{}", run.stderr);
    // A token in the environment lifts the restriction and grants every group.
    let env = [("EDGECACHE_SERVER_TOKEN", "env-token-0123456789")];
    let server = VersionsServer::start(data.path(), &["--listen", "0.0.0.0:0"], &env).await;
    assert_eq!(server.call(Method::GET, "/v1/resources", None).await.0, 200);
}

#[tokio::test]
async fn private_origins_are_refused_unless_allowed() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), &[], &[]).await;
    for url in [
        origin.url("/plain/x"),
        format!("http://localhost:{}/plain/x", origin.address.port()),
        "http://169.254.169.254/latest/meta-data".into(),
    ] {
        let (status, error) = server
            .call(Method::PUT, "/v1/resources", Some(json!({"url": url})))
            .await;
        assert_eq!(
            (status, error["error"]["field"].as_str()),
            (422, Some("url")),
            "{url}: {error}"
        );
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--allow-private-origins")
        );
    }
    assert_eq!(origin.hits("/plain/x"), 0);
}

#[tokio::test]
async fn bad_input_names_the_field() {
    let (_data, origin, server) = started().await;
    let url = origin.url("/plain/x");
    let cases = [
        (json!({"url": "not a url"}), 422, "url"),
        (
            json!({"url": url, "strategy": {"kind": "cron", "expr": "61 * * * *"}}),
            422,
            "strategy",
        ),
        (
            json!({"url": url, "strategy": {"kind": "cron", "expr": "0 0 * * *", "timezone": "Mars/Base"}}),
            422,
            "strategy",
        ),
        (json!({"url": url, "strategy": {"kind": "whenever"}}), 422, "strategy"),
        (json!({"url": url, "limits": {"max_unpinned": -1}}), 422, "limits"),
        (json!({"url": url, "group": "no spaces"}), 422, "group"),
        (json!({"url": url, "method": "DELETE"}), 422, "method"),
        (json!({"url": url, "headers": {"bad header": "x"}}), 422, "headers"),
        (json!({"url": url, "query": 5}), 422, "query"),
        (json!({"url": url, "colour": "red"}), 422, "colour"),
    ];
    for (body, status, field) in cases {
        let (got, error) = server.call(Method::PUT, "/v1/resources", Some(body.clone())).await;
        assert_eq!(
            (got, error["error"]["field"].as_str()),
            (status, Some(field)),
            "{body}: {error}"
        );
    }
    let response = server
        .request(Method::PUT, "/v1/resources")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "invalid_json");
    for (query, field) in [
        ("limit=lots", "limit"),
        ("group=", "group"),
        ("group=a%20b", "group"),
        ("strategy=sometimes", "strategy"),
        ("status=done", "status"),
        ("failing=maybe", "failing"),
    ] {
        let (status, error) = server.call(Method::GET, &format!("/v1/resources?{query}"), None).await;
        assert_eq!(
            (status, error["error"]["field"].as_str()),
            (422, Some(field)),
            "{query}"
        );
    }
    let (_, list) = server.call(Method::GET, "/v1/resources", None).await;
    assert_eq!(list["total"], 0, "nothing half-written: {list}");

    // Served, so its fetch never fails: `failing` can't change under the test.
    origin.set("x", "served");
    let rid = server
        .register(json!({"url": url, "strategy": {"kind": "never"}}))
        .await;
    for (query, total) in [
        ("search=/plain/x&strategy=never", 1),
        ("search=/plain/y", 0),
        ("strategy=age", 0),
        ("failing=true", 0),
        ("failing=false", 1),
    ] {
        let (status, list) = server.call(Method::GET, &format!("/v1/resources?{query}"), None).await;
        assert_eq!((status, list["total"].as_u64()), (200, Some(total)), "{query}: {list}");
    }
    let (status, patched) = server
        .call(
            Method::PATCH,
            &format!("/v1/resources/{rid}"),
            Some(json!({"limits": {"max_pinned": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["limits"],
        json!({"max_unpinned": 2, "max_pinned": 1, "max_failed": 3})
    );
    let (status, error) = server
        .call(
            Method::PATCH,
            &format!("/v1/resources/{rid}"),
            Some(json!({"strategy": {"kind": "age", "seconds": 0}})),
        )
        .await;
    assert_eq!((status, error["error"]["field"].as_str()), (422, Some("strategy")));
    assert_eq!(server.call(Method::GET, "/v1/resources/unknown-id", None).await.0, 404);
}

#[tokio::test]
async fn metrics_and_the_api_description_are_served() {
    let (_data, origin, server) = started().await;
    origin.set("m", "measured");
    let rid = server
        .register(json!({"url": origin.url("/plain/m"), "strategy": {"kind": "never"}}))
        .await;
    server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    let body = server
        .request(Method::GET, &format!("/v1/resources/{rid}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(body.text().await.unwrap(), "measured");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("edgecache_server_fetches_total{outcome=\"new_version\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("edgecache_server_content_bytes_total 8"), "{metrics}");
    let (status, api) = server.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    for path in [
        "/v1/resources",
        "/v1/resources/{rid}/content",
        "/v1/resources/{rid}/versions/{vid}/pin",
    ] {
        assert!(api["paths"][path].is_object(), "{path} is described");
    }
    assert!(api["paths"]["/v1/resources"]["put"].is_object() && api["paths"]["/v1/resources"]["get"].is_object());
    assert!(api["components"]["schemas"]["Version"].is_object());
    // What a generated client relies on: the bodies routes take, the
    // parameters' types, and the one route that needs no token.
    let registration = &api["components"]["schemas"]["Registration"];
    assert_eq!(
        api["paths"]["/v1/resources"]["put"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Registration"
    );
    assert_eq!(registration["required"], json!(["url"]), "{registration}");
    assert_eq!(registration["additionalProperties"], false, "{registration}");
    let parameters = api["paths"]["/v1/resources/{rid}/content"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let at = parameters.iter().find(|parameter| parameter["name"] == "at").unwrap();
    assert_eq!(at["schema"]["format"], "date-time", "{at}");
    assert_eq!(api["paths"]["/healthz"]["get"]["security"], json!([]));
    assert!(api["paths"]["/metrics"]["get"]["responses"]["200"]["content"]["text/plain"].is_object());
}
