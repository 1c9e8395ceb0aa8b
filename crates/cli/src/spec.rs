//! `--cache LOCATION`: which store a command uses.

use std::time::Duration;

use edgecache::ExpireAfter;
use edgecache::store::Location;

/// The location given, else the default one (`EDGECACHE_CACHE` is read by
/// clap into the option itself).
pub fn location_or_default(given: Option<Location>) -> Location {
    given.unwrap_or_else(|| Location::Sqlite(Location::default_sqlite_path()))
}

/// A duration such as `90s`, `10m`, `2h` or `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match text.parse::<ExpireAfter>() {
        Ok(ExpireAfter::After(duration)) => Ok(duration),
        _ => Err(format!("{text:?} is not a duration such as 90s, 10m, 2h or 1d")),
    }
}
