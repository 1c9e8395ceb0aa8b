//! A throwaway PostgreSQL cluster the tests start themselves: `initdb` and
//! `pg_ctl` from Debian's `postgresql` package, in a temp directory, on a
//! free port. As root (CI), the cluster runs as the `postgres` user, since
//! PostgreSQL refuses to run as root.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub struct PostgresServer {
    pub port: u16,
    bin: PathBuf,
    directory: tempfile::TempDir,
    running: bool,
    paused: bool,
}

/// Where `initdb` is: on the PATH, or in Debian's versioned directory.
fn postgres_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

impl PostgresServer {
    /// Starts a cluster. Without PostgreSQL the test fails and says how to
    /// install it, unless `EDGECACHE_SKIP_POSTGRES_TESTS=1` asks to skip:
    /// then it returns `None` and says so. CI installs it and never skips.
    pub fn start() -> Option<PostgresServer> {
        let Some(bin) = postgres_bin() else {
            super::skip_or_fail(
                "PostgreSQL (initdb, pg_ctl)",
                "Install it (Debian/Ubuntu: `apt-get install postgresql`, macOS: `brew install postgresql`)",
                "EDGECACHE_SKIP_POSTGRES_TESTS",
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("address")
            .port();
        let directory = tempfile::tempdir().expect("tempdir");
        let server = PostgresServer {
            port,
            bin,
            directory,
            running: false,
            paused: false,
        };
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(server.directory.path())
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "cannot give the cluster's directory to the postgres user"
            );
        }
        let data = server.data();
        let initdb = server.command(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "edgecache",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        server.run(initdb, "initdb");
        let mut server = server;
        server.restart();
        Some(server)
    }

    fn data(&self) -> String {
        self.directory.path().join("data").display().to_string()
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.args(args).stdin(Stdio::null());
        command
    }

    fn run(&self, mut command: Command, what: &str) {
        let output = command
            .output()
            .unwrap_or_else(|error| panic!("cannot run {what}: {error}"));
        assert!(
            output.status.success(),
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://edgecache@127.0.0.1:{}/postgres", self.port)
    }

    /// A URL to a new, empty database of this cluster.
    pub async fn new_database(&self) -> String {
        let name = format!("edgecache_{}", uuid::Uuid::new_v4().simple());
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        format!("postgres://edgecache@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the cluster at once, as a crash would (clients see their
    /// connections break).
    pub fn kill(&mut self) {
        if self.running {
            let data = self.data();
            let stop = self.command("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
            self.run(stop, "pg_ctl stop");
            self.running = false;
        }
    }

    /// Freezes the database as a hung host would: SIGSTOP to the postmaster
    /// and every backend. Connections stay open; nothing answers.
    pub fn pause(&mut self) {
        self.signal("STOP");
        self.paused = true;
    }

    /// Thaws what [`PostgresServer::pause`] froze.
    pub fn resume(&mut self) {
        self.signal("CONT");
        self.paused = false;
    }

    fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.directory.path().join("data/postmaster.pid"))
            .expect("postmaster.pid of a running cluster")
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        // The backends first, so none runs on while the postmaster stops.
        let _ = Command::new("pkill").args([&format!("-{signal}"), "-P", &pid]).status();
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status();
        assert!(status.is_ok_and(|status| status.success()), "kill -{signal} {pid}");
    }

    /// Starts it again on the same port, with the same data.
    pub fn restart(&mut self) {
        let data = self.data();
        let socket_dir = self.directory.path().display().to_string();
        let options = format!(
            "-p {} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port
        );
        let log = self.directory.path().join("log").display().to_string();
        let start = self.command("pg_ctl", &["-D", &data, "-o", &options, "-l", &log, "-w", "start"]);
        self.run(start, "pg_ctl start");
        self.running = true;
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.paused {
            self.resume();
        }
        self.kill();
    }
}
