//! Response bodies, stored once per content: `sha256/<2 hex>/<64 hex>`,
//! through `object_store` (a local directory now; a bucket can follow).
//!
//! A body is streamed to `tmp/<version>` while it is hashed, then renamed
//! to its content address, so a crash never leaves a partial body under a
//! real name and identical bodies share one blob.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, MutexGuard};

/// Parts handed to the store while a body streams in: memory per download
/// stays near `PART_SIZE * PARTS_IN_FLIGHT`.
const PART_SIZE: usize = 1 << 20;
const PARTS_IN_FLIGHT: usize = 2;

/// Bodies up to this size are kept in memory once read: blobs never
/// change, so the copy never goes stale.
const SMALL_BODY: u64 = 256 * 1024;
/// The bytes the small-body cache holds at most.
const SMALL_BODIES_TOTAL: u64 = 64 * 1024 * 1024;

#[derive(Clone)]
struct BodyBytes;

impl quick_cache::Weighter<String, Bytes> for BodyBytes {
    fn weight(&self, key: &String, body: &Bytes) -> u64 {
        (key.len() + body.len() + 64) as u64
    }
}

/// The blob store.
pub(crate) struct Blobs {
    root: std::path::PathBuf,
    store: Arc<LocalFileSystem>,
    small: quick_cache::sync::Cache<String, Bytes, BodyBytes>,
    /// Held while blobs are committed or deleted, so a collection never
    /// deletes a blob a new version is about to reference.
    lock: Mutex<()>,
}

/// A body being written.
pub(crate) struct BlobWriter {
    path: Path,
    upload: WriteMultipart,
    hasher: Sha256,
    size: u64,
}

/// A complete body under its temporary name.
pub(crate) struct TempBlob {
    path: Path,
    /// Its SHA-256, lower-case hex.
    pub(crate) sha256: String,
    /// Its size in bytes.
    pub(crate) size: u64,
}

fn blob_path(sha256: &str) -> Path {
    let prefix = sha256.get(..2).unwrap_or("xx");
    Path::from(format!("sha256/{prefix}/{sha256}"))
}

impl Blobs {
    /// Opens the store under `dir`, removing what an interrupted run left
    /// in `tmp/`.
    pub(crate) fn open(dir: &FsPath) -> std::io::Result<Self> {
        let temp = dir.join("tmp");
        match std::fs::remove_dir_all(&temp) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        std::fs::create_dir_all(dir.join("sha256"))?;
        std::fs::create_dir_all(&temp)?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|error| std::io::Error::other(error.to_string()))?
            .with_automatic_cleanup(true)
            .with_fsync(true);
        Ok(Self {
            root: dir.to_owned(),
            store: Arc::new(store),
            small: quick_cache::sync::Cache::with_weighter(4096, SMALL_BODIES_TOTAL, BodyBytes),
            lock: Mutex::new(()),
        })
    }

    /// Bytes an unprivileged writer may still use on the disk holding the
    /// blobs; `None` where that can't be told.
    pub(crate) fn free_space(&self) -> Option<u64> {
        #[cfg(unix)]
        {
            let stats = rustix::fs::statvfs(&self.root).ok()?;
            stats.f_bavail.checked_mul(stats.f_frsize)
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    /// Starts writing the body of `version_id`.
    pub(crate) async fn writer(&self, version_id: &str) -> Result<BlobWriter, object_store::Error> {
        let path = Path::from(format!("tmp/{version_id}"));
        let upload = self.store.put_multipart(&path).await?;
        Ok(BlobWriter {
            path,
            upload: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Held while committing a blob and recording its version, and while
    /// collecting and deleting blobs.
    pub(crate) async fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Moves a complete body to its content address (the caller holds
    /// [`Blobs::lock`]). An identical body already there is kept.
    pub(crate) async fn commit(&self, temp: &TempBlob) -> Result<(), object_store::Error> {
        match self
            .store
            .rename_if_not_exists(&temp.path, &blob_path(&temp.sha256))
            .await
        {
            Ok(()) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => self.store.delete(&temp.path).await,
            Err(error) => Err(error),
        }
    }

    /// Deletes a body that won't be kept.
    pub(crate) async fn discard(&self, temp: TempBlob) {
        if let Err(error) = self.store.delete(&temp.path).await {
            tracing::warn!(%error, "could not delete a temporary body");
        }
    }

    /// Streams a blob of `size` bytes, or `range` of it.
    pub(crate) async fn read(
        &self,
        sha256: &str,
        size: u64,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, object_store::Error> {
        if size <= SMALL_BODY {
            let body = match self.small.get(sha256) {
                Some(body) => body,
                None => {
                    let body = self.store.get(&blob_path(sha256)).await?.bytes().await?;
                    self.small.insert(sha256.to_owned(), body.clone());
                    body
                }
            };
            let part = match range {
                Some(range) => {
                    let end = usize::try_from(range.end).unwrap_or(usize::MAX).min(body.len());
                    let start = usize::try_from(range.start).unwrap_or(usize::MAX).min(end);
                    body.slice(start..end)
                }
                None => body,
            };
            return Ok(futures_util::stream::once(std::future::ready(Ok(part))).boxed());
        }
        let mut options = GetOptions::new();
        if let Some(range) = range {
            options = options.with_range(Some(GetRange::Bounded(range)));
        }
        Ok(self.store.get_opts(&blob_path(sha256), options).await?.into_stream())
    }

    /// Deletes blobs (the caller holds [`Blobs::lock`]).
    pub(crate) async fn delete(&self, shas: &[String]) {
        for sha in shas {
            self.small.remove(sha);
            match self.store.delete(&blob_path(sha)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => tracing::warn!(%error, blob = %sha, "could not delete a blob"),
            }
        }
    }

    /// Deletes blobs no version references (left by a crash between a
    /// commit and its record). Answers how many went.
    pub(crate) async fn sweep(&self, referenced: &HashSet<String>) -> Result<usize, object_store::Error> {
        let listed: Vec<_> = self.store.list(Some(&Path::from("sha256"))).try_collect().await?;
        let stray: Vec<String> = listed
            .into_iter()
            .filter_map(|meta| meta.location.filename().map(str::to_owned))
            .filter(|sha| !referenced.contains(sha))
            .collect();
        self.delete(&stray).await;
        Ok(stray.len())
    }
}

impl BlobWriter {
    /// Appends a chunk, waiting while too many parts are in flight.
    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), object_store::Error> {
        self.hasher.update(chunk);
        self.size = self.size.saturating_add(chunk.len() as u64);
        self.upload.write(chunk);
        self.upload.wait_for_capacity(PARTS_IN_FLIGHT).await
    }

    /// Bytes written so far.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Completes the body under its temporary name.
    pub(crate) async fn finish(self) -> Result<TempBlob, object_store::Error> {
        self.upload.finish().await?;
        let sha256 = crate::cache::key::hex_lower(&self.hasher.finalize());
        Ok(TempBlob {
            path: self.path,
            sha256,
            size: self.size,
        })
    }

    /// Abandons the body.
    pub(crate) async fn abort(self) {
        if let Err(error) = self.upload.abort().await {
            tracing::debug!(%error, "could not abort a partial body");
        }
    }
}
