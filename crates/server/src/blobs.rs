//! Response bodies, stored once per content: `sha256/<2 hex>/<64 hex>`,
//! through `object_store`: a local directory, or an S3-compatible bucket
//! (feature `replicas`) that several replicas share.
//!
//! A body is streamed to `tmp/<version>` while it is hashed (a multipart
//! upload in a bucket, visible only once complete), then moved to its
//! content address, so a crash never leaves a partial body under a real
//! name and identical bodies share one blob. In a bucket the move is a
//! copy: overwriting a blob with the same bytes changes nothing a reader
//! sees.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, Down};

/// Parts handed to the store while a body streams in: memory per download
/// stays near `part_size * PARTS_IN_FLIGHT`.
const LOCAL_PART_SIZE: usize = 1 << 20;
/// S3 refuses parts under 5 MiB but the last.
#[cfg(feature = "replicas")]
const BUCKET_PART_SIZE: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 2;

/// Temporary bodies in a bucket older than this were left by a replica
/// that died; the sweep deletes them (no fetch takes this long).
#[cfg(feature = "replicas")]
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Bodies up to this size are kept in memory once read: blobs never
/// change, so the copy never goes stale.
const SMALL_BODY: u64 = 256 * 1024;
/// The bytes the small-body cache holds at most.
const SMALL_BODIES_TOTAL: u64 = 64 * 1024 * 1024;
/// Writes and copies get the time their size takes at this rate on top of
/// the deadline.
const SLOWEST_WRITE: u64 = 1 << 20;
/// Listing every blob (the sweep at start) may take this much longer than
/// one call.
const LISTING: Duration = Duration::from_secs(300);

/// Why a body can't be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The store answers, but the body isn't there.
    #[error("the body is missing from the blob store")]
    Missing,
    /// The store didn't answer in time, is failing, or refused.
    #[error("{0}")]
    Unavailable(String),
}

/// What an error of the store says of it: out (`Some(true)`), alive
/// (an answer about one object), or nothing (not found: the object, or the
/// whole bucket; the health check tells which).
fn is_outage(error: &object_store::Error) -> Option<bool> {
    match error {
        object_store::Error::NotFound { .. } => None,
        object_store::Error::AlreadyExists { .. }
        | object_store::Error::Precondition { .. }
        | object_store::Error::NotModified { .. } => Some(false),
        _ => Some(true),
    }
}

fn down(error: Down) -> object_store::Error {
    object_store::Error::Generic {
        store: "blobs",
        source: Box::new(error),
    }
}

/// The time writing `bytes` may take beyond the deadline.
fn write_time(bytes: u64) -> Duration {
    Duration::from_secs(bytes / SLOWEST_WRITE)
}

#[derive(Clone)]
struct BodyBytes;

impl quick_cache::Weighter<String, Bytes> for BodyBytes {
    fn weight(&self, key: &String, body: &Bytes) -> u64 {
        (key.len() + body.len() + 64) as u64
    }
}

/// The blob store.
pub(crate) struct Blobs {
    /// The local directory, for free space; `None` for a bucket.
    root: Option<std::path::PathBuf>,
    store: Arc<dyn ObjectStore>,
    part_size: usize,
    small: quick_cache::sync::Cache<String, Bytes, BodyBytes>,
    backend: Arc<Backend>,
    /// This process's object under `.health/`.
    health: Path,
    /// Why the last health check failed; `None` when it passed.
    last_check: std::sync::Mutex<Option<String>>,
}

/// A body being written.
pub(crate) struct BlobWriter {
    store: Arc<dyn ObjectStore>,
    backend: Arc<Backend>,
    path: Path,
    part_size: usize,
    /// The start of the body, until it outgrows one part: a body that ends
    /// sooner is written with one request, not a multipart upload's three.
    first_part: Vec<u8>,
    upload: Option<WriteMultipart>,
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
    pub(crate) fn open(dir: &FsPath, deadline: Duration) -> std::io::Result<Self> {
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
        Ok(Self::new(
            Some(dir.to_owned()),
            Arc::new(store),
            LOCAL_PART_SIZE,
            deadline,
        ))
    }

    /// The store in a bucket, `s3://bucket/prefix`, with credentials and
    /// region from the usual `AWS_*` variables, and `endpoint` for an
    /// S3-compatible server other than AWS.
    #[cfg(feature = "replicas")]
    pub(crate) fn bucket(url: &str, endpoint: Option<&str>, deadline: Duration) -> Result<Self, object_store::Error> {
        let parsed = url::Url::parse(url).map_err(|error| object_store::Error::Generic {
            store: "S3",
            source: format!("{url} is not an s3://bucket/prefix URL: {error}").into(),
        })?;
        if parsed.scheme() != "s3" || parsed.host_str().is_none_or(str::is_empty) {
            return Err(object_store::Error::Generic {
                store: "S3",
                source: format!("{url} is not an s3://bucket/prefix URL").into(),
            });
        }
        // Our deadlines bound each call; the client's own timeout would cut
        // a long body off mid-stream, and its retries must end within ours.
        let client = object_store::ClientOptions::new()
            .with_timeout_disabled()
            .with_connect_timeout(deadline.min(Duration::from_secs(5)))
            .with_config(
                object_store::ClientConfigKey::ReadTimeout,
                format!("{}ms", deadline.as_millis()),
            );
        let retry = object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: deadline,
            ..object_store::RetryConfig::default()
        };
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(parsed.host_str().unwrap_or_default())
            .with_client_options(client)
            .with_retry(retry);
        if let Some(endpoint) = endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                // S3-compatible servers answer on the endpoint's own host.
                .with_virtual_hosted_style_request(false);
        }
        let bucket: Arc<dyn ObjectStore> = Arc::new(builder.build()?);
        let prefix = parsed.path().trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            bucket
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(bucket, prefix))
        };
        Ok(Self::new(None, store, BUCKET_PART_SIZE, deadline))
    }

    fn new(
        root: Option<std::path::PathBuf>,
        store: Arc<dyn ObjectStore>,
        part_size: usize,
        deadline: Duration,
    ) -> Self {
        Self {
            root,
            store,
            part_size,
            small: small_bodies(),
            backend: Arc::new(Backend::new("blobs", "blob store", deadline)),
            health: Path::from(format!(".health/{}", uuid::Uuid::new_v4())),
            last_check: std::sync::Mutex::new(None),
        }
    }

    /// Whether the store works: a small write under `.health/`, read back
    /// and deleted. A missing bucket, or one that can't be written, fails.
    /// The outcome is kept for [`Blobs::last_check`].
    pub(crate) async fn check(&self) -> Result<(), object_store::Error> {
        let written = Bytes::from(jiff::Timestamp::now().to_string());
        let checked = async {
            self.probe(self.store.put(&self.health, written.clone().into())).await?;
            let read = self
                .probe(async { self.store.get(&self.health).await?.bytes().await })
                .await?;
            if read != written {
                return Err(object_store::Error::Generic {
                    store: "blobs",
                    source: "the health check read back other bytes than it wrote".into(),
                });
            }
            self.probe(self.store.delete(&self.health)).await
        }
        .await;
        *self.last_check.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            checked.as_ref().err().map(ToString::to_string);
        checked
    }

    /// One call of the health check: any error counts against the store,
    /// since a bucket that is gone answers "not found" like a missing object.
    async fn probe<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, object_store::Error>>,
    ) -> Result<T, object_store::Error> {
        self.backend
            .call(Duration::ZERO, call, |_| Some(true))
            .await
            .map_err(down)?
    }

    /// Why the store failed its last health check, or is failing now.
    pub(crate) fn last_check(&self) -> Option<String> {
        if self.backend.is_down() {
            return Some(self.backend.down_error().to_string());
        }
        self.last_check
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Checks the store every `every`, so `/healthz` tells the truth and
    /// a store that came back is noticed without a request.
    pub(crate) async fn watch(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let _ = self.check().await;
        }
    }

    /// Bytes an unprivileged writer may still use on the disk holding the
    /// blobs; `None` where that can't be told.
    pub(crate) fn free_space(&self) -> Option<u64> {
        self.disk().map(|(free, _)| free)
    }

    /// The disk holding the blobs: bytes free (to an unprivileged writer)
    /// and its size; `None` for a bucket, or where that can't be told.
    pub(crate) fn disk(&self) -> Option<(u64, u64)> {
        #[cfg(unix)]
        {
            let stats = rustix::fs::statvfs(self.root.as_ref()?).ok()?;
            Some((
                stats.f_bavail.checked_mul(stats.f_frsize)?,
                stats.f_blocks.checked_mul(stats.f_frsize)?,
            ))
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    /// Starts writing the body of `version_id`.
    pub(crate) async fn writer(&self, version_id: &str) -> Result<BlobWriter, object_store::Error> {
        Ok(BlobWriter {
            store: self.store.clone(),
            backend: self.backend.clone(),
            path: Path::from(format!("tmp/{version_id}")),
            part_size: self.part_size,
            first_part: Vec::new(),
            upload: None,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Moves a complete body to its content address (the caller holds
    /// the index's blobs lock). An identical body already there is kept.
    pub(crate) async fn commit(&self, temp: &TempBlob) -> Result<(), object_store::Error> {
        let target = blob_path(&temp.sha256);
        if self.root.is_none() {
            // A bucket has no atomic rename: a server-side copy, then the
            // temporary goes. Same name, same bytes.
            call(
                &self.backend,
                write_time(temp.size),
                self.store.copy(&temp.path, &target),
            )
            .await?;
            return call(&self.backend, Duration::ZERO, self.store.delete(&temp.path)).await;
        }
        match call(
            &self.backend,
            Duration::ZERO,
            self.store.rename_if_not_exists(&temp.path, &target),
        )
        .await
        {
            Ok(()) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                call(&self.backend, Duration::ZERO, self.store.delete(&temp.path)).await
            }
            Err(error) => Err(error),
        }
    }

    /// Deletes a body that won't be kept.
    pub(crate) async fn discard(&self, temp: TempBlob) {
        if let Err(error) = call(&self.backend, Duration::ZERO, self.store.delete(&temp.path)).await {
            tracing::warn!(%error, "could not delete a temporary body");
        }
    }

    /// Streams a blob of `size` bytes, or `range` of it. A body that
    /// stalls for longer than the deadline between two chunks ends in an
    /// error, so the response is cut off rather than ended early.
    pub(crate) async fn read(
        &self,
        sha256: &str,
        size: u64,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>, ReadError> {
        if size <= SMALL_BODY {
            let body = match self.small.get(sha256) {
                Some(body) => body,
                None => {
                    let read = call(&self.backend, Duration::ZERO, async {
                        self.store.get(&blob_path(sha256)).await?.bytes().await
                    })
                    .await;
                    let body = self.readable(read).await?;
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
        let opened = call(
            &self.backend,
            Duration::ZERO,
            self.store.get_opts(&blob_path(sha256), options),
        )
        .await;
        let stream = self.readable(opened).await?.into_stream();
        Ok(stalls_end(stream, self.backend.clone()).boxed())
    }

    /// A read's outcome for the reader: a body that isn't found is missing
    /// only if the store passes a health check (a bucket that's gone
    /// answers "not found" too).
    async fn readable<T>(&self, read: Result<T, object_store::Error>) -> Result<T, ReadError> {
        match read {
            Ok(value) => Ok(value),
            Err(object_store::Error::NotFound { .. }) => match self.check().await {
                Ok(()) => Err(ReadError::Missing),
                Err(error) => Err(ReadError::Unavailable(error.to_string())),
            },
            Err(error) => Err(ReadError::Unavailable(error.to_string())),
        }
    }

    /// Deletes blobs (the caller holds the index's blobs lock).
    pub(crate) async fn delete(&self, shas: &[String]) {
        for sha in shas {
            self.small.remove(sha);
            match call(&self.backend, Duration::ZERO, self.store.delete(&blob_path(sha))).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => tracing::warn!(%error, blob = %sha, "could not delete a blob"),
            }
        }
    }

    /// Deletes blobs no version references (left by a crash between a
    /// commit and its record). Answers how many went.
    pub(crate) async fn sweep(&self, referenced: &HashSet<String>) -> Result<usize, object_store::Error> {
        let listed: Vec<_> = call(
            &self.backend,
            LISTING,
            self.store.list(Some(&Path::from("sha256"))).try_collect(),
        )
        .await?;
        let stray: Vec<String> = listed
            .into_iter()
            .filter_map(|meta| meta.location.filename().map(str::to_owned))
            .filter(|sha| !referenced.contains(sha))
            .collect();
        self.delete(&stray).await;
        #[cfg(feature = "replicas")]
        if self.root.is_none() {
            // Temporaries of replicas that died after completing an upload.
            let stale = seconds_ago(STALE_TEMP);
            let temps: Vec<_> = call(
                &self.backend,
                LISTING,
                self.store.list(Some(&Path::from("tmp"))).try_collect(),
            )
            .await?;
            for meta in temps.into_iter().filter(|meta| meta.last_modified.timestamp() < stale) {
                if let Err(error) = call(&self.backend, Duration::ZERO, self.store.delete(&meta.location)).await {
                    tracing::warn!(%error, "could not delete a stale temporary body");
                }
            }
        }
        Ok(stray.len())
    }
}

/// `stream`, ended by an error when a chunk takes longer than the
/// backend's deadline, or the store fails mid-body; either counts against
/// the store.
fn stalls_end(
    stream: BoxStream<'static, Result<Bytes, object_store::Error>>,
    backend: Arc<Backend>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(Some((stream, backend)), |state| async move {
        let (mut stream, backend) = state?;
        match tokio::time::timeout(backend.deadline(), stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some((stream, backend)))),
            Ok(None) => None,
            Ok(Some(Err(error))) => {
                backend.report_failure(&error.to_string());
                Some((Err(std::io::Error::other(error)), None))
            }
            Err(_) => {
                let stalled = format!("the body stalled for more than {:?}", backend.deadline());
                backend.report_failure(&stalled);
                Some((Err(std::io::Error::new(std::io::ErrorKind::TimedOut, stalled)), None))
            }
        }
    })
}

fn small_bodies() -> quick_cache::sync::Cache<String, Bytes, BodyBytes> {
    quick_cache::sync::Cache::with_weighter(4096, SMALL_BODIES_TOTAL, BodyBytes)
}

/// Seconds since the epoch, `age` ago.
#[cfg(feature = "replicas")]
fn seconds_ago(age: std::time::Duration) -> i64 {
    jiff::Timestamp::now()
        .as_second()
        .saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX))
}

impl BlobWriter {
    /// Appends a chunk, waiting while too many parts are in flight.
    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), object_store::Error> {
        self.hasher.update(chunk);
        self.size = self.size.saturating_add(chunk.len() as u64);
        let part_time = write_time(self.part_size as u64);
        if let Some(upload) = &mut self.upload {
            upload.write(chunk);
            return call(&self.backend, part_time, upload.wait_for_capacity(PARTS_IN_FLIGHT)).await;
        }
        self.first_part.extend_from_slice(chunk);
        if self.first_part.len() < self.part_size {
            return Ok(());
        }
        let started = call(&self.backend, Duration::ZERO, self.store.put_multipart(&self.path)).await?;
        let mut upload = WriteMultipart::new_with_chunk_size(started, self.part_size);
        upload.write(&std::mem::take(&mut self.first_part));
        let waited = call(&self.backend, part_time, upload.wait_for_capacity(PARTS_IN_FLIGHT)).await;
        self.upload = Some(upload);
        waited
    }

    /// Bytes written so far.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Completes the body under its temporary name.
    pub(crate) async fn finish(self) -> Result<TempBlob, object_store::Error> {
        let part_time = write_time(self.part_size.saturating_mul(PARTS_IN_FLIGHT) as u64);
        match self.upload {
            Some(upload) => {
                call(&self.backend, part_time, upload.finish()).await?;
            }
            // One request: the object appears whole or not at all.
            None => {
                let time = write_time(self.first_part.len() as u64);
                call(&self.backend, time, self.store.put(&self.path, self.first_part.into())).await?;
            }
        }
        let sha256 = edgecache_base::digest::hex_lower(&self.hasher.finalize());
        Ok(TempBlob {
            path: self.path,
            sha256,
            size: self.size,
        })
    }

    /// Abandons the body.
    pub(crate) async fn abort(self) {
        if let Some(upload) = self.upload
            && let Err(error) = call(&self.backend, Duration::ZERO, upload.abort()).await
        {
            tracing::debug!(%error, "could not abort a partial body");
        }
    }
}

/// Runs one call to the store under its deadline and breaker.
async fn call<T>(
    backend: &Backend,
    extra: Duration,
    call: impl std::future::Future<Output = Result<T, object_store::Error>>,
) -> Result<T, object_store::Error> {
    backend.call(extra, call, is_outage).await.map_err(down)?
}
