//! `--cache LOCATION`: which store a command uses.

use edgecache::store::Location;

/// The location given, else the default one (`EDGECACHE_CACHE` is read by
/// clap into the option itself).
pub fn location_or_default(given: Option<Location>) -> Location {
    given.unwrap_or_else(|| Location::Sqlite(Location::default_sqlite_path()))
}
