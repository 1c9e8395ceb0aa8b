//! A server or tool a test needs and this machine lacks.

/// What to do when a test needs `what` and this machine lacks it: skip,
/// saying so where `cargo test` shows it, when `variable=1` asks for that
/// (the caller then returns `None`); else fail with how to install it. CI
/// installs everything and never skips.
pub fn skip_or_fail(what: &str, install: &str, variable: &str) {
    if std::env::var_os(variable).is_some_and(|skip| skip == "1") {
        // Straight to the process's stderr: the harness captures
        // `eprintln!` of passing tests, and a skip must be seen.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {}: {what} is not installed ({variable}=1)",
            std::thread::current().name().unwrap_or("a test")
        );
        return;
    }
    panic!("{what} is not installed. {install} or set {variable}=1 to skip the tests that need it");
}
