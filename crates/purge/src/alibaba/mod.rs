//! Alibaba Cloud CDN: refresh (purge) and prefetch (warm) URL lists.
//!
//! - [`Credentials`]: an AccessKey pair (with an optional STS token), given
//!   or loaded the way Alibaba Cloud's SDKs load it.
//! - [`Signer`]: ACS3-HMAC-SHA256 request signing.
//! - [`AlibabaCdnClient`]: one call per method (`refresh`, `prefetch`,
//!   `quota`, `tasks`), signed, rate-limited and retried.
//! - [`BatchJob`]: a whole list, done the safe way. Every line is validated
//!   before anything is sent; the quota is checked; URLs are packed up to the
//!   API's per-call maximum (never more than 10 domains per call) and
//!   submitted concurrently within the call rate; accepted batches go to a
//!   journal so an interrupted run resumes without paying twice; tasks are
//!   polled until done, and every URL is reported.
//!
//! ```no_run
//! use edgecache_purge::alibaba::{AlibabaCdnClient, Credentials, ObjectType, Operation};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cdn = AlibabaCdnClient::new(Credentials::load(None)?)?;
//! let report = cdn
//!     .batch(Operation::Refresh { object_type: ObjectType::File, force: false })
//!     .run(["https://www.example.com/app.js", "https://www.example.com/app.css"])
//!     .await?;
//! assert!(report.is_success());
//! # Ok(()) }
//! ```

mod batch;
mod client;
mod credentials;
mod report;
mod sign;
mod target;
mod tasks;

pub use self::batch::{BatchError, BatchJob, Operation, Step, check_objects};
pub use self::client::{
    API_VERSION, AlibabaCdnClient, AlibabaError, Area, DEFAULT_ENDPOINT, ObjectType, PrefetchOptions, Quota,
    RateLimits, Submitted,
};
pub use self::credentials::{Credentials, CredentialsError};
pub use self::report::{RunReport, UrlOutcome, UrlReport};
pub use self::sign::Signer;
pub use self::tasks::{TASK_IDS_PER_QUERY, Task, TaskFilter, TaskPage, TaskStatus};
pub use crate::JournalError;
