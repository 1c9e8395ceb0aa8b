//! The journal: a header line saying what kind of run it records, then one
//! JSON line per accepted piece of work, written and synced as each is
//! accepted, so an interrupted run resumes without sending anything twice.
//! Alibaba's batch runs and mixed runs across targets both keep one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why the journal could not be used. Nothing is sent when it cannot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// Reading or writing failed.
    #[error("journal {}: {source}", path.display())]
    Io {
        /// The journal.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The journal records an earlier run, and resuming was not asked for.
    #[error("journal {} already records a run: resume it, or remove the file to start afresh", path.display())]
    Exists {
        /// The journal.
        path: PathBuf,
    },
    /// The journal records a different kind of run.
    #[error("journal {} records a {found} run, not a {expected} run", path.display())]
    Mismatch {
        /// The journal.
        path: PathBuf,
        /// What it records.
        found: String,
        /// What this run is.
        expected: String,
    },
    /// A line is not a journal record.
    #[error("journal {}:{line}: {reason}", path.display())]
    Corrupt {
        /// The journal.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// The first line: what kind of run a journal records. Resuming a journal
/// of another kind is an error.
pub(crate) trait Header: Serialize + DeserializeOwned + PartialEq {
    /// The kind of run, for error messages: `file refresh`, `url purge`.
    fn describe(&self) -> String;
}

/// An open journal; appends are serialized and synced to disk.
#[derive(Clone)]
pub(crate) struct Journal {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

impl Journal {
    /// Opens a journal for `header`'s kind of run, with the batches an
    /// earlier run recorded when `resume` is set. Without `resume`, an
    /// existing journal with records is an error: it records accepted work.
    pub(crate) fn open<H: Header, R: DeserializeOwned>(
        path: &Path,
        header: &H,
        resume: bool,
    ) -> Result<(Self, Vec<R>), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(io(error)),
        };
        // A journal with no records (say, the quota check refused the run) holds nothing to lose.
        let has_records = text.lines().skip(1).any(|line| !line.trim().is_empty());
        let accepted = match (has_records, resume) {
            (false, _) => Vec::new(),
            (true, false) => {
                return Err(JournalError::Exists {
                    path: path.to_path_buf(),
                });
            }
            (true, true) => read(path, &text, header)?,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        if !has_records {
            let mut line = serde_json::to_vec(header).unwrap_or_default();
            line.push(b'\n');
            file.set_len(0)
                .and_then(|()| file.write_all(&line))
                .and_then(|()| file.sync_data())
                .map_err(io)?;
        } else if !text.ends_with('\n') {
            // A torn last line (the process died mid-write): start the next on its own line.
            file.write_all(b"\n").map_err(io)?;
        }
        let journal = Journal {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(file)),
        };
        Ok((journal, accepted))
    }

    /// Appends a record and waits until it is on disk.
    pub(crate) async fn record(&self, record: &impl Serialize) -> Result<(), JournalError> {
        self.record_all(std::slice::from_ref(record)).await
    }

    /// Appends records in one write and waits until they are on disk.
    pub(crate) async fn record_all<R: Serialize>(&self, records: &[R]) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::new();
        for record in records {
            lines.extend(serde_json::to_vec(record).unwrap_or_default());
            lines.push(b'\n');
        }
        let file = Arc::clone(&self.file);
        let written = tokio::task::spawn_blocking(move || {
            let mut file = file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // One write, so a crash tears at most the last line.
            file.write_all(&lines).and_then(|()| file.sync_data())
        })
        .await
        .unwrap_or_else(|join| Err(std::io::Error::other(join)));
        written.map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn read<H: Header, R: DeserializeOwned>(path: &Path, text: &str, expected: &H) -> Result<Vec<R>, JournalError> {
    let corrupt = |line: usize, reason: String| JournalError::Corrupt {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let lines: Vec<&str> = text.lines().collect();
    let header: H = serde_json::from_str(lines.first().copied().unwrap_or_default()).map_err(|error| {
        corrupt(
            1,
            format!("not an edgecache journal header of this kind of run: {error}"),
        )
    })?;
    if header != *expected {
        return Err(JournalError::Mismatch {
            path: path.to_path_buf(),
            found: header.describe(),
            expected: expected.describe(),
        });
    }
    let mut accepted = Vec::new();
    for (index, line) in lines.iter().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(batch) => accepted.push(batch),
            Err(error) if index + 1 == lines.len() && !text.ends_with('\n') => {
                tracing::warn!(path = %path.display(), line = index + 1, %error, "ignoring a torn last journal line");
            }
            Err(error) => return Err(corrupt(index + 1, error.to_string())),
        }
    }
    Ok(accepted)
}
