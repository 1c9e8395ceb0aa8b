//! One test in a process of its own, inside the one test binary: for tests
//! that measure the whole process (its heap, its peak RSS), install a
//! process-wide recorder, or change the environment. The test starts its
//! own binary again with only itself selected, one thread, and a variable
//! that says so; there the body runs, alone.

/// The variable that tells a test it is the one its process runs.
const OWN_PROCESS: &str = "EDGECACHE_TEST_OWN_PROCESS";

/// The name the test harness gives test `name` of module `module` (as
/// `module_path!()` gives it): its path inside the test crate, the filter
/// that selects it with `--exact`.
pub fn test_path(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_crate, inner)) => format!("{inner}::{name}"),
        None => name.to_owned(),
    }
}

/// Whether the caller should return now because its body ran, and passed,
/// in a process of its own; `false` in that process, where the body runs.
/// `test` is the test's path as `module_path!()` and its name give it.
///
/// ```ignore
/// #[test]
/// fn heap_stays_bounded() {
///     if edgecache_testkit::in_own_process(module_path!(), "heap_stays_bounded") {
///         return;
///     }
///     // measured here, alone in the process
/// }
/// ```
///
/// Panics, with the child's output, when the test failed there.
pub fn in_own_process(module: &str, name: &str) -> bool {
    let path = test_path(module, name);
    if std::env::var(OWN_PROCESS).is_ok_and(|running| running == path) {
        return false;
    }
    let binary = std::env::current_exe().expect("the test binary's path");
    let output = std::process::Command::new(binary)
        .args([path.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(OWN_PROCESS, &path)
        .output()
        .expect("start the test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{path}, in a process of its own, failed:\n{stdout}\n{stderr}"
    );
    // A filter that matched nothing would pass without running anything.
    assert!(
        stdout.contains("1 passed"),
        "{path} did not run in its own process:\n{stdout}\n{stderr}"
    );
    eprint!("{stderr}");
    true
}
