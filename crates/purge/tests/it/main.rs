//! The purge targets' integration tests, in one binary: each module is one
//! vendor or concern, against a local stand-in that enforces that vendor's
//! documented rules (`edgecache_testkit::stand_ins`). Tests that run the
//! `edgecache` command live in `crates/cli/tests/it` (see `tests/README.md`).

mod alibaba_cdn;
mod alibaba_signing;
mod cdn_targets;
mod fast_purge;
mod verify;
