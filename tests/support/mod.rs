//! Real components for the tests: a throwaway PostgreSQL cluster (initdb in a temp dir, as
//! an unprivileged user, reachable only on a Unix socket) and the machine's kubectl. A
//! missing component fails the test with what to install: it is never skipped.

#![allow(dead_code)]

pub mod fake_loki;
pub mod fake_loki_metric;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};

/// The bundled incident's three logs, as the README's run command passes them.
pub const INCIDENT: [&str; 3] = [
    "fixtures/incident/nginx-access.log",
    "fixtures/incident/nginx-error.log",
    "fixtures/incident/backend.log",
];

/// The bundled incident as Loki streams: the nginx access log on `container="nginx"`
/// stdout, its error log on stderr, the backend's log on `container="backend"` stdout,
/// each with the `extra` labels too; the `i`th line of a file is stamped `stamp(i)` (ns).
pub fn incident_streams(extra: &[(&str, &str)], stamp: impl Fn(usize) -> i64) -> Vec<fake_loki::FakeStream> {
    let streams = [
        ("nginx", "stdout", INCIDENT[0]),
        ("nginx", "stderr", INCIDENT[1]),
        ("backend", "stdout", INCIDENT[2]),
    ];
    streams
        .into_iter()
        .map(|(container, output, path)| {
            let labels: Vec<(&str, &str)> = [("container", container), ("stream", output)]
                .into_iter()
                .chain(extra.iter().copied())
                .collect();
            let mut stream = fake_loki::FakeStream::new(&labels);
            let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
            for (i, line) in text.lines().enumerate() {
                stream.push(stamp(i), line);
            }
            stream
        })
        .collect()
}

/// Runs logwarden from the repository root.
pub fn logwarden() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logwarden"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).env("NO_COLOR", "1");
    cmd
}

/// What `scan --output json --namespace web ... --out DIR/bundle` on the incident gave.
pub struct Bundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// The scan document.
    pub stdout: String,
    /// What logwarden said about the bundle.
    pub stderr: String,
}

/// Writes the incident's review bundle into `dir/bundle` with `extra` options; fails
/// unless the scan succeeded.
pub fn incident_bundle(dir: &Path, extra: &[&str]) -> Bundle {
    let bundle = dir.join("bundle");
    let out = logwarden()
        .args(["scan", "--output", "json", "--namespace", "web", "--out"])
        .arg(&bundle)
        .args(extra)
        .args(INCIDENT)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = ok(out, "logwarden scan --out");
    Bundle { dir: bundle, stdout, stderr }
}

/// Fails with a message unless `out` succeeded.
pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The machine's kubectl, or a failure that says what to install.
pub fn kubectl() -> Command {
    let found = Command::new("kubectl").arg("version").arg("--client").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "kubectl is required by the remediation tests (kubectl patch --local runs offline): install kubectl"
    );
    Command::new("kubectl")
}

fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOGWARDEN_PG_BIN") {
        return dir.into();
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().unwrap_or_else(|| {
        panic!("PostgreSQL server binaries (initdb, pg_ctl) are required: apt-get install postgresql-15, or set LOGWARDEN_PG_BIN")
    })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A throwaway PostgreSQL cluster, stopped and deleted on drop.
pub struct Postgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    socket: PathBuf,
    port: u16,
    bin: PathBuf,
    as_user: Option<&'static str>,
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

impl Postgres {
    /// initdb and start a cluster; PostgreSQL refuses to run as root, so under root the
    /// server runs as `nobody`.
    pub fn start() -> Postgres {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new().prefix("logwarden-pg").tempdir().unwrap();
        let as_user = is_root().then_some("nobody");
        if let Some(user) = as_user {
            let status = Command::new("chown").args(["-R", user]).arg(dir.path()).status().unwrap();
            assert!(status.success(), "chown of the PostgreSQL temp dir failed");
        }
        let (data, socket) = (dir.path().join("data"), dir.path().to_path_buf());
        let port = 20000 + (std::process::id() % 20000) as u16 + NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let pg = Postgres { _dir: dir, data, socket, port, bin, as_user };
        let init = pg
            .server_cmd("initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "-D"])
            .arg(&pg.data)
            .output()
            .unwrap();
        ok(init, "initdb");
        let opts = format!("-k {} -p {} -c listen_addresses=''", pg.socket.display(), pg.port);
        let log = pg.socket.join("server.log");
        let start = pg
            .server_cmd("pg_ctl")
            .args(["-w", "-D"])
            .arg(&pg.data)
            .args(["-o", &opts, "-l"])
            .arg(&log)
            .arg("start")
            .output()
            .unwrap();
        ok(start, "pg_ctl start");
        pg
    }

    fn server_cmd(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        match self.as_user {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        }
    }

    /// psql against the cluster's `postgres` database, stopping at the first error.
    pub fn psql(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.arg("-h").arg(&self.socket).args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-X",
            "-q",
        ]);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs one SQL command; returns unaligned, tuples-only output.
    pub fn sql(&self, sql: &str) -> String {
        ok(self.psql().args(["-v", "ON_ERROR_STOP=1", "-A", "-t", "-c", sql]).output().unwrap(), sql)
    }

    /// Runs a script file the way a reviewer would: `psql -f FILE`.
    pub fn run_file(&self, file: &Path) -> Output {
        self.psql().arg("-f").arg(file).output().unwrap()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ =
            self.server_cmd("pg_ctl").args(["-D"]).arg(&self.data).args(["-m", "immediate", "stop"]).output();
    }
}
