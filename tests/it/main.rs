//! The client cache's integration tests, in one binary: each module is one
//! concern (see `tests/README.md` for where a new test goes). Helpers,
//! origins and server harnesses come from `edgecache-testkit`.

// Counts live and peak heap bytes for the tests that measure memory; those
// run in a process of their own (`edgecache_testkit::in_own_process`).
#[global_allocator]
static ALLOCATOR: edgecache_testkit::counting::Counting = edgecache_testkit::counting::Counting;

mod client_cache;
mod conformance;
mod edgegrid;
mod edgegrid_env;
mod hostile_headers;
mod key_properties;
mod large_bodies;
mod memory_bound;
mod observability;
mod redis_cluster;
mod redis_faults;
mod redis_shared;
mod redis_tier;
mod redis_tls;
mod resilience;
mod safety;
mod sqlite_concurrency;
mod store_conformance;
mod stored_memory;
mod tower_layer;
