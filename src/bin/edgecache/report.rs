//! What both CDN commands print, in one shape: invalid lines before
//! anything is read or sent, then one result per object on standard output
//! (text, or `--json`), and the summary on standard error.

use std::io::Write;

use edgecache::purge::{InvalidObject, SourcedObject};
use serde::Serialize;

/// One object's result. `--json` prints a list of these; the fields and
/// status names are stable.
#[derive(Debug, Serialize)]
pub struct ObjectResult {
    /// The object as sent.
    pub object: String,
    /// `accepted`, `complete`, `failed`, `rejected`, `timed_out` or `not_sent`.
    pub status: &'static str,
    /// Why, or what the CDN said (empty when there is nothing to add).
    pub detail: String,
    /// Where the object came from: `file:line`, `-:line`, `argument N`.
    pub origin: String,
    /// The CDN's id for the request or task that carried it.
    pub id: Option<String>,
}

/// Where an object came from, by its position in the list.
pub fn origin(objects: &[SourcedObject], index: usize) -> String {
    objects
        .get(index)
        .map_or_else(|| "input".to_owned(), |object| object.origin.clone())
}

/// `file:line: reason: "object"` for each invalid object, and the error
/// that ends the command: nothing was read from credentials or sent.
pub fn invalid(objects: &[SourcedObject], invalid: &[InvalidObject]) -> anyhow::Error {
    for object in invalid {
        eprintln!(
            "{}: {}: {:?}",
            origin(objects, object.index),
            object.reason,
            object.object
        );
    }
    let count = invalid.len();
    anyhow::anyhow!(
        "{count} invalid {}; nothing was sent",
        if count == 1 { "line" } else { "lines" }
    )
}

/// The results on standard output: tab-separated `status object detail`
/// lines, or a JSON list. A closed standard output ends quietly.
pub fn print(results: &[ObjectResult], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, results)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        results
            .iter()
            .try_for_each(|result| writeln!(out, "{}\t{}\t{}", result.status, result.object, result.detail))
    };
    match written.and_then(|()| out.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}

/// `count noun`, with the noun plural unless there is one.
pub fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("{count} {noun}")
    } else {
        format!("{count} {noun}s")
    }
}
