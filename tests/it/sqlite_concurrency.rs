//! One SQLite file, 16 tasks in each of two processes, reading and writing at
//! once: no "database is locked", no lost write.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use edgecache::store::{SqliteStore, Store, StoreEntry};

const TASKS: u64 = 16;
const WRITES_PER_TASK: u64 = 150;
const WORKER_DB: &str = "EDGECACHE_TEST_WORKER_DB";
const WORKER_ID: &str = "EDGECACHE_TEST_WORKER_ID";

/// Writes unique keys, rewrites one contended key, and reads back, from 16
/// tasks; returns the number of errors (each printed).
async fn workload(path: &str, process: &str) -> u64 {
    // Every read goes to the file: the in-process tier would hide contention.
    let store = SqliteStore::open(path).expect("open").without_memory_tier();
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (store, errors, process) = (store.clone(), Arc::clone(&errors), process.to_owned());
            tokio::spawn(async move {
                let fail = |error: edgecache::store::StoreError| {
                    eprintln!("{process}/{task}: {error}");
                    errors.fetch_add(1, Ordering::SeqCst);
                };
                for write in 0..WRITES_PER_TASK {
                    let key = format!("{process}-{task}-{write}");
                    let entry = |key: String| StoreEntry {
                        url: format!("http://example.com/{key}"),
                        key,
                        created_at: SystemTime::now(),
                        expires: None,
                        tags: Vec::new(),
                        value: Bytes::from(vec![b'v'; 512]).into(),
                    };
                    if let Err(error) = store.put(entry(key.clone())).await {
                        fail(error);
                    }
                    if let Err(error) = store.put(entry("contended".into())).await {
                        fail(error);
                    }
                    match store.get(&key).await {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            eprintln!("{process}/{task}: {key} missing right after it was written");
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(error) => fail(error),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    errors.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_of_sixteen_tasks_lose_nothing_and_never_see_locked() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("shared.sqlite");
    drop(SqliteStore::open(&path).expect("create"));
    let path = path.to_str().expect("utf-8 path").to_owned();

    let worker = edgecache_testkit::test_path(module_path!(), "worker_process");
    let other = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([worker.as_str(), "--exact", "--ignored", "--nocapture"])
        .env(WORKER_DB, &path)
        .env(WORKER_ID, "second")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the second process");
    let errors_here = workload(&path, "first").await;
    let other = other.wait_with_output().await.expect("second process");
    let other_stdout = String::from_utf8_lossy(&other.stdout);
    assert!(
        other.status.success() && other_stdout.contains("worker errors: 0"),
        "second process: {other_stdout}\n{}",
        String::from_utf8_lossy(&other.stderr)
    );
    assert_eq!(errors_here, 0);

    let store = SqliteStore::open(&path).expect("reopen");
    let stats = store.stats().await.expect("stats");
    assert_eq!(
        stats.entries,
        2 * TASKS * WRITES_PER_TASK + 1,
        "every write is there (plus the contended key)"
    );
}

/// Run by the test above as its second process; does nothing on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by two_processes_of_sixteen_tasks_lose_nothing_and_never_see_locked"]
async fn worker_process() {
    let path = std::env::var(WORKER_DB).expect("started by the parent test");
    let id = std::env::var(WORKER_ID).expect("started by the parent test");
    let errors = workload(&path, &id).await;
    println!("worker errors: {errors}");
}
