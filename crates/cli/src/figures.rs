//! The cache's figures for one run of the tool: a `metrics` recorder that
//! keeps counters and gauges in memory, printed by `get -v` and `cache stats`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

#[derive(Default)]
struct Figures {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    gauges: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

/// `name{label="value",…}`, as Prometheus writes a series.
fn series(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|label| format!("{}=\"{}\"", label.key(), label.value()))
        .collect();
    if labels.is_empty() {
        key.name().to_owned()
    } else {
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

fn slot(map: &Mutex<BTreeMap<String, Arc<AtomicU64>>>, key: &Key) -> Arc<AtomicU64> {
    let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Arc::clone(map.entry(series(key)).or_default())
}

struct Installed(&'static Figures);

impl Recorder for Installed {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(slot(&self.0.counters, key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(slot(&self.0.gauges, key))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

static FIGURES: OnceLock<&'static Figures> = OnceLock::new();

/// Starts counting; call before the cache is used.
pub fn record() {
    let figures = *FIGURES.get_or_init(|| Box::leak(Box::default()));
    // Only fails when a recorder is installed already: that one counts.
    let _ = metrics::set_global_recorder(Installed(figures));
}

/// The cache's figures, one `series value` per line, sorted. Hits, misses
/// and coalesced answers show even at zero, so a run that asked the origin
/// reads as such; the rest show once recorded.
pub fn report() -> String {
    let Some(figures) = FIGURES.get() else {
        return String::new();
    };
    let mut lines: BTreeMap<String, String> = [
        edgecache::metrics::HITS,
        edgecache::metrics::MISSES,
        edgecache::metrics::COALESCED,
    ]
    .into_iter()
    .map(|name| (name.to_owned(), "0".to_owned()))
    .collect();
    let lock = |map: &'static Mutex<BTreeMap<String, Arc<AtomicU64>>>| {
        map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    for (series, value) in lock(&figures.counters).iter() {
        lines.insert(series.clone(), value.load(Ordering::Relaxed).to_string());
    }
    for (series, value) in lock(&figures.gauges).iter() {
        lines.insert(
            series.clone(),
            f64::from_bits(value.load(Ordering::Relaxed)).to_string(),
        );
    }
    lines
        .into_iter()
        .filter(|(series, _)| series.starts_with("edgecache_cache_"))
        .map(|(series, value)| format!("{series} {value}\n"))
        .collect()
}
