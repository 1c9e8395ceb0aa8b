//! The page shells: the layout, the login form and the place the
//! fragment goes. They hold no data, so they need no token.

use axum::extract::Path;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

/// The page around a fragment: `part` is where the script loads it from.
fn layout(title: &str, current: &str, part: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · edgecache" }
                link rel="stylesheet" href="/ui/app.css";
                script src="/ui/app.js" defer {}
            }
            body data-part=(part) {
                header {
                    strong.brand { "edgecache" }
                    nav {
                        a href="/ui" aria-current=[(current == "resources").then_some("page")] { "Resources" }
                        a href="/ui/purges" aria-current=[(current == "purges").then_some("page")] { "Purges" }
                        a href="/ui/server" aria-current=[(current == "server").then_some("page")] { "Server" }
                    }
                    button #logout type="button" hidden { "Log out" }
                }
                form #login hidden {
                    h1 { "Log in" }
                    p { "This server needs a token. It is kept in this tab only, until the tab is closed." }
                    label { "Token " input #token type="password" autocomplete="off" required; }
                    button type="submit" { "Log in" }
                }
                p #flash role="status" {}
                main #main { p.loading { "Loading…" } }
            }
        }
    }
}

pub(super) async fn resources() -> Response {
    Html(layout("Resources", "resources", "/ui/part/resources").into_string()).into_response()
}

pub(super) async fn resource(Path(rid): Path<String>) -> Response {
    let part = format!(
        "/ui/part/resources/{}",
        percent_encoding::utf8_percent_encode(&rid, SEGMENT)
    );
    Html(layout("Resource", "resources", &part).into_string()).into_response()
}

pub(super) async fn purges() -> Response {
    // The script adds the page's query (`?object=…`) to the fragment's URL.
    Html(layout("Purges", "purges", "/ui/part/purges").into_string()).into_response()
}

pub(super) async fn server() -> Response {
    Html(layout("Server", "server", "/ui/part/server").into_string()).into_response()
}

/// What a path segment may not hold as is.
pub(super) const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_');
