//! What every purge command prints, in one shape: invalid lines before
//! anything is read or sent, then one result per target and object on
//! standard output (text, or `--json`), the counts on standard error, and
//! one progress bar meanwhile.

use std::io::{IsTerminal, Write};

use edgecache_purge::{Event, InvalidObject, ObjectReport, Report, SourcedObject, Status};
use serde::Serialize;

/// One object's result at one target. `--json` prints a list of these; the
/// fields and status names are stable.
#[derive(Debug, Serialize)]
pub struct ObjectResult {
    /// The target: `cache`, `versions`, `akamai`, `alibaba`.
    pub target: String,
    /// The object as sent.
    pub object: String,
    /// `done`, `accepted`, `failed`, `skipped` or `not_sent`.
    pub status: &'static str,
    /// Why, or what the target said (empty when there is nothing to add).
    pub detail: String,
    /// Where the object came from: `file:line`, `-:line`, `argument N`.
    pub origin: String,
    /// The target's id for what carried it.
    pub id: Option<String>,
    /// For a failure: whether trying again could help.
    pub retryable: bool,
    /// With `--verify`: what the target serves now.
    #[serde(flatten)]
    pub check: Option<super::verify::Checked>,
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

/// The results of report lines, with where each object came from.
pub fn results<'a>(lines: impl IntoIterator<Item = &'a ObjectReport>, objects: &[SourcedObject]) -> Vec<ObjectResult> {
    lines
        .into_iter()
        .map(|line| ObjectResult {
            target: line.target.clone(),
            object: line.object.clone(),
            status: line.outcome.status.as_str(),
            detail: line.outcome.detail.clone(),
            origin: origin(objects, line.index),
            id: line.outcome.id.clone(),
            retryable: line.outcome.retryable,
            check: None,
        })
        .collect()
}

/// The results on standard output: tab-separated `status target object
/// detail` lines, or a JSON list. A closed standard output ends quietly.
pub fn print(results: &[ObjectResult], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, results)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        results.iter().try_for_each(|result| match &result.check {
            None => writeln!(
                out,
                "{}\t{}\t{}\t{}",
                result.status, result.target, result.object, result.detail
            ),
            // The verification is the second column; its reasons follow the purge's.
            Some(check) => {
                let mut detail = result.detail.clone();
                for part in [
                    Some(format!("check: {}", check.verify_detail)),
                    check.edge.as_ref().map(|edge| format!("edge {edge}")),
                    check
                        .rewarm_detail
                        .as_ref()
                        .map(|rewarm| format!("rewarm {}: {rewarm}", check.rewarm.unwrap_or_default())),
                ]
                .into_iter()
                .flatten()
                {
                    if !detail.is_empty() {
                        detail.push_str("; ");
                    }
                    detail.push_str(&part);
                }
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}",
                    result.status, check.verified, result.target, result.object, detail
                )
            }
        })
    };
    match written.and_then(|()| out.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}

/// Counts per target on standard error, and what the run noticed.
pub fn summary(report: &Report, journal: Option<&std::path::Path>) {
    eprintln!(
        "{:<12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "target", "done", "accepted", "failed", "skipped", "not sent", "calls", "time"
    );
    for target in &report.targets {
        let count = |status: Status| target.count(status);
        let took = match (target.started_at, target.finished_at) {
            (Some(started), Some(finished)) => finished
                .duration_since(started)
                .map_or_else(|_| "-".to_owned(), |took| format!("{:.1}s", took.as_secs_f64())),
            _ => "-".to_owned(),
        };
        eprintln!(
            "{:<12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
            target.name,
            count(Status::Done),
            count(Status::Accepted),
            count(Status::Failed),
            count(Status::Skipped),
            count(Status::NotSent),
            target.calls,
            took
        );
    }
    let resumed = report.lines().filter(|line| line.resumed).count();
    if resumed > 0 {
        eprintln!("{resumed} done by an earlier run (journal), not sent again");
    }
    if report.duplicates > 0 {
        eprintln!("{} repeated line(s) skipped", report.duplicates);
    }
    eprintln!("elapsed    {:>7.1}s", report.elapsed.as_secs_f64());
    if let Some(broken) = &report.order_broken {
        eprintln!("warning: layer order broken: {broken}");
    }
    if report.stopped {
        match journal {
            Some(journal) => eprintln!(
                "stopped early; continue with the same command plus --resume (journal {})",
                journal.display()
            ),
            None => eprintln!("stopped early; use --journal next time to resume without resending"),
        }
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

/// A progress bar on a terminal, plain lines otherwise.
#[derive(Clone)]
pub struct ProgressBar(Option<indicatif::ProgressBar>);

impl ProgressBar {
    pub fn new(total: u64, unit: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return ProgressBar(None);
        }
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit} {{msg}}"))
        {
            bar.set_style(style);
        }
        ProgressBar(Some(bar))
    }

    /// `done` more are finished; `line` is the bar's message, or a line of its own when there is no bar.
    pub fn advance(&self, done: usize, line: &str) {
        match &self.0 {
            Some(bar) => {
                bar.inc(done as u64);
                bar.set_message(line.to_owned());
            }
            None => eprintln!("{line}"),
        }
    }

    /// A step that finishes nothing: the bar's message, or a line.
    pub fn note(&self, line: &str) {
        match &self.0 {
            Some(bar) => bar.set_message(line.to_owned()),
            None => eprintln!("{line}"),
        }
    }

    /// Follows a purge run's events.
    pub fn follow(&self, event: &Event) {
        match event {
            Event::Started { target, objects } => self.note(&format!("{target}: {}", plural(*objects, "object"))),
            Event::Finished {
                target,
                objects,
                failed,
            } => {
                let verdict = if *failed == 0 {
                    "done".to_owned()
                } else {
                    format!("{failed} FAILED")
                };
                self.advance(*objects, &format!("{target}: {} {verdict}", plural(*objects, "object")));
            }
            Event::Note { target, message } if target.is_empty() => self.note(message),
            Event::Note { target, message } => self.note(&format!("{target}: {message}")),
            _ => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Stops a run on Ctrl-C: calls in flight finish, nothing more is sent; a
/// second Ctrl-C quits at once.
pub async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("interrupted: finishing the calls in flight, sending nothing more (Ctrl-C again to quit now)");
        tokio::spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    }
}
