//! Credentials from the environment win over the `.edgerc` file when all four
//! variables are set. The test runs in a process of its own: it changes the
//! process environment.

use edgecache::edgegrid::Credentials;

#[test]
fn akamai_section_variables_override_the_edgerc_file() {
    // Changes the process's environment: alone in one.
    if edgecache_testkit::in_own_process(module_path!(), "akamai_section_variables_override_the_edgerc_file") {
        return;
    }
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join(".edgerc");
    std::fs::write(
        &path,
        "[ci-section]\nhost = akab-file.luna.akamaiapis.net\nclient_token = t\nclient_secret = s\naccess_token = a\n",
    )
    .expect("write");

    let from_file = Credentials::load(Some(&path), Some("ci-section")).expect("from the file");
    assert_eq!(from_file.host(), "akab-file.luna.akamaiapis.net");

    // SAFETY: this process runs this one test, on one thread; nothing else
    // reads the environment meanwhile.
    unsafe {
        std::env::set_var("AKAMAI_CI_SECTION_HOST", "https://akab-env.luna.akamaiapis.net/");
        std::env::set_var("AKAMAI_CI_SECTION_CLIENT_TOKEN", "t");
        std::env::set_var("AKAMAI_CI_SECTION_CLIENT_SECRET", "s");
    }
    let partial = Credentials::load(Some(&path), Some("ci-section")).expect("three of four: still the file");
    assert_eq!(partial.host(), "akab-file.luna.akamaiapis.net");

    // SAFETY: as above.
    unsafe { std::env::set_var("AKAMAI_CI_SECTION_ACCESS_TOKEN", "a") };
    let from_environment = Credentials::load(Some(&path), Some("ci-section")).expect("from the environment");
    assert_eq!(from_environment.host(), "akab-env.luna.akamaiapis.net");
}
