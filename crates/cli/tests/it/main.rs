//! The `edgecache` command's integration tests, in one binary: everything
//! that runs the program, `edgecache serve` included (the versioned server's
//! tests start it through `edgecache_testkit::versions_server`). Cargo builds
//! a package's binary only for that package's own tests, so they live here
//! (see `tests/README.md` for where a new test goes).

// Counts live and peak heap bytes for the tests that measure memory; those
// run in a process of their own (`edgecache_testkit::in_own_process`).
#[global_allocator]
static ALLOCATOR: edgecache_testkit::counting::Counting = edgecache_testkit::counting::Counting;

mod alibaba_cdn;
mod cdn_targets;
mod cli;
mod dashboard;
mod fast_purge;
mod first_hour;
mod purge_everywhere;
mod purge_service;
mod redis_cache;
mod replica_faults;
mod replicas;
mod secrets;
mod versions_client;
mod versions_download_memory;
mod versions_fetching;
mod versions_server;
