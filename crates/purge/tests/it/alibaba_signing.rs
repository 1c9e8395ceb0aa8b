//! ACS3-HMAC-SHA256 against vectors made with Alibaba Cloud's own signing
//! code (`fixtures/make_alibaba_vectors.py`), and the credentials file.

use edgecache_purge::alibaba::{Credentials, CredentialsError, Signer};
use serde_json::Value;

#[test]
fn signatures_match_the_reference_implementation() {
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/alibaba_vectors.json")).expect("fixture is JSON");
    let text = |value: &Value| value.as_str().expect("string").to_owned();
    let vectors = fixture["vectors"].as_array().expect("vectors");
    assert_eq!(vectors.len(), 5);
    for vector in vectors {
        let name = text(&vector["name"]);
        let mut credentials = Credentials::new(text(&fixture["access_key_id"]), text(&fixture["access_key_secret"]));
        if let Some(token) = vector["security_token"].as_str() {
            credentials = credentials.with_security_token(token);
        }
        let mut url = url::Url::parse("https://cdn.aliyuncs.com/").expect("url");
        for pair in vector["query"].as_array().expect("query") {
            url.query_pairs_mut().append_pair(&text(&pair[0]), &text(&pair[1]));
        }
        let mut headers = http::HeaderMap::new();
        for section in ["headers", "unsigned"] {
            for (header, value) in vector[section].as_object().expect("headers") {
                headers.insert(
                    http::HeaderName::try_from(header.as_str()).expect("name"),
                    text(value).parse().expect("value"),
                );
            }
        }
        let method = http::Method::from_bytes(text(&vector["method"]).as_bytes()).expect("method");
        Signer::new(credentials).sign_at(
            &method,
            &url,
            &mut headers,
            text(&vector["body"]).as_bytes(),
            &text(&fixture["date"]),
            &text(&fixture["nonce"]),
        );
        for (header, expected) in vector["expected"].as_object().expect("expected") {
            assert_eq!(
                headers.get(header.as_str()).map(|value| value.to_str().expect("ascii")),
                Some(expected.as_str().expect("string")),
                "{name}: {header}"
            );
        }
    }
}

#[test]
fn two_signatures_differ_in_date_and_nonce() {
    let signer = Signer::new(Credentials::new("id", "secret"));
    let url = url::Url::parse("https://cdn.aliyuncs.com/").expect("url");
    let sign = || {
        let mut headers = http::HeaderMap::new();
        signer.sign(&http::Method::POST, &url, &mut headers, b"");
        headers
    };
    let (first, second) = (sign(), sign());
    assert_ne!(first["x-acs-signature-nonce"], second["x-acs-signature-nonce"]);
    assert_ne!(first["authorization"], second["authorization"]);
    let date = first["x-acs-date"].to_str().expect("ascii");
    assert!(
        date.len() == 20 && date.ends_with('Z') && date.as_bytes()[10] == b'T',
        "{date}"
    );
}

fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("credentials");
    std::fs::write(&path, text).expect("write");
    (directory, path)
}

#[test]
fn the_credentials_file_is_read_by_profile() {
    let (_directory, path) = write(
        "[default]\ntype = access_key\naccess_key_id = LTAIdefault\naccess_key_secret = s1\n\n\
         [ci]\ntype = sts\naccess_key_id = \"STS.ci\"\naccess_key_secret = s2\nsecurity_token = CAIS-token\n",
    );
    let default = Credentials::from_file(&path, "default").expect("default profile");
    assert_eq!(default.access_key_id(), "LTAIdefault");
    let ci = Credentials::from_file(&path, "ci").expect("ci profile");
    assert_eq!(ci.access_key_id(), "STS.ci");
    let shown = format!("{ci:?}");
    assert!(!shown.contains("s2") && !shown.contains("CAIS-token"), "{shown}");
}

#[test]
fn credentials_file_errors_say_where() {
    let (_directory, path) = write("[default]\naccess_key_id = a\nthis is not ini\n");
    let error = Credentials::from_file(&path, "default").expect_err("syntax");
    assert!(matches!(error, CredentialsError::Syntax { line: 3, .. }), "{error}");
    assert!(error.to_string().contains("credentials:3"), "{error}");

    let (_directory, path) = write("[default]\naccess_key_id = a\n");
    let error = Credentials::from_file(&path, "default").expect_err("no secret");
    assert!(error.to_string().contains("access_key_secret"), "{error}");

    let error = Credentials::from_file(&path, "prod").expect_err("no profile");
    assert!(error.to_string().contains("no profile [prod]"), "{error}");

    let (_directory, path) = write("[default]\ntype = ram_role_arn\naccess_key_id = a\naccess_key_secret = b\n");
    let error = Credentials::from_file(&path, "default").expect_err("unsupported type");
    assert!(
        error.to_string().contains("credentials:2") && error.to_string().contains("ram_role_arn"),
        "{error}"
    );
}
