//! A real PostgreSQL for tests: Debian's `postgresql` package, a cluster made with `initdb`
//! in a temp dir, listening on a free loopback port, stopped when the last test holding it
//! is done. No mocks, no containers.
//!
//! Shared by the unit tests (`#[path]`-included under `src/server/store/postgres/`) and the
//! integration tests (`tests/integration/common/mod.rs`), so it uses only std and libc.
//!
//! - [`TestDatabase::create`] makes a fresh database for one test, on the process's shared
//!   cluster, or on the cluster `TILEBOX_TEST_DATABASE_URL` names when set (`.ci/test` starts
//!   one for the whole run, which saves a cluster per test process under nextest).
//! - [`TestCluster::start`] starts a cluster of the test's own, which it may restart.
//!
//! Running as root (as CI does), the cluster runs as the `postgres` user the package made.
//! The postmaster gets `SIGQUIT` (immediate shutdown) when the process that started it
//! dies, so a killed test leaves no server behind.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

/// The environment variable naming a running cluster's admin URL, used instead of
/// starting one.
pub const SHARED_URL_VARIABLE: &str = "TILEBOX_TEST_DATABASE_URL";
/// The environment variable naming the directory of `initdb`, `postgres` and `psql`.
pub const BINDIR_VARIABLE: &str = "TILEBOX_PG_BINDIR";

/// The directory holding PostgreSQL's programs: `TILEBOX_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/<version>/bin`. Panics with how to install it when there is none:
/// a test that needs PostgreSQL must not pass without it.
pub fn bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BINDIR_VARIABLE) {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = fs_err::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed: these tests need Debian's `postgresql` package \
             (`apt-get install postgresql`, which `.ci/run` does), or {BINDIR_VARIABLE} naming \
             the directory of initdb, postgres and psql"
        ),
    }
}

/// A PostgreSQL cluster started by this process.
pub struct TestCluster {
    /// `postgres://tilebox@127.0.0.1:PORT/postgres`: the superuser on the admin database.
    pub admin_url: String,
    pub port: u16,
    owned: Option<Owned>,
}

struct Owned {
    /// Holds `data/` and the log; removed with the cluster.
    directory: PathBuf,
    bindir: PathBuf,
    user: Option<(u32, u32)>,
    keeper: Mutex<Option<Keeper>>,
}

/// The thread that started the postmaster: `PR_SET_PDEATHSIG` fires when the *thread* that
/// forked dies, so it lives as long as the server runs. Dropping `stop` ends it, and it then
/// shuts the server down (fast); sending a signal on `stop` starts the shutdown with that
/// signal instead (`SIGQUIT`: immediate, as in a crash).
struct Keeper {
    stop: mpsc::Sender<libc::c_int>,
    thread: std::thread::JoinHandle<()>,
}

/// How often [`TestCluster::restart`] tries to bind its port again while another process
/// holds it, half a second apart.
const RESTART_BIND_ATTEMPTS: u32 = 20;

static SHARED: Mutex<Weak<TestCluster>> = Mutex::new(Weak::new());

impl TestCluster {
    /// The cluster tests share: the one `TILEBOX_TEST_DATABASE_URL` names, or one this
    /// process starts and stops after its last user.
    pub fn shared() -> Arc<TestCluster> {
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cluster) = shared.upgrade() {
            return cluster;
        }
        let cluster = Arc::new(match std::env::var(SHARED_URL_VARIABLE) {
            Ok(url) if !url.is_empty() => TestCluster {
                port: port_of(&url),
                admin_url: url,
                owned: None,
            },
            _ => TestCluster::start(),
        });
        *shared = Arc::downgrade(&cluster);
        cluster
    }

    /// Starts a cluster of the caller's own: `initdb` in a temp dir, then the server on a
    /// free loopback port, with fsync off (the tests kill processes, not the machine) but
    /// `synchronous_commit` on: a commit is acknowledged only once its WAL is written, so an
    /// immediate shutdown ([`crash_restart`](Self::crash_restart)) loses nothing acknowledged,
    /// and a server that acknowledges before committing shows.
    pub fn start() -> TestCluster {
        let bindir = bindir();
        let directory = temp_directory();
        let user = postgres_user();
        if let Some((uid, gid)) = user {
            chown(&directory, uid, gid);
        }
        let data = directory.join("data");
        let mut initdb = Command::new(bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "tilebox",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .current_dir(&directory);
        run_as(&mut initdb, user);
        let output = initdb.output().expect("run initdb");
        assert!(
            output.status.success(),
            "initdb in {} failed: {}",
            data.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let mut owned = Owned {
            directory,
            bindir,
            user,
            keeper: Mutex::new(None),
        };
        // Another process may take the free port before the server binds it.
        for attempt in 1.. {
            let port = free_port();
            match owned.launch(port) {
                Ok(()) => {
                    return TestCluster {
                        admin_url: format!("postgres://tilebox@127.0.0.1:{port}/postgres"),
                        port,
                        owned: Some(owned),
                    };
                }
                Err(log) if attempt < 3 && log.contains("could not bind") => continue,
                Err(log) => {
                    owned.directory = PathBuf::new();
                    panic!("PostgreSQL did not start on port {port}: {log}")
                }
            }
        }
        unreachable!()
    }

    /// Stops the server (fast shutdown: sessions are ended, a checkpoint is written) and
    /// starts it again on the same port and data; answers once it accepts connections.
    pub fn restart(&self) {
        self.stop_and_start(None);
    }

    /// Stops the server as a crash would (`SIGQUIT`: immediate shutdown, no checkpoint,
    /// sessions cut) and starts it again on the same port and data, which replays the WAL;
    /// answers once it accepts connections.
    pub fn crash_restart(&self) {
        self.stop_and_start(Some(libc::SIGQUIT));
    }

    fn stop_and_start(&self, signal: Option<libc::c_int>) {
        let owned = self
            .owned
            .as_ref()
            .expect("only a cluster this test started can be restarted");
        owned.stop_with(signal);
        // The port must stay the same (the servers under test hold URLs naming it), so when
        // another process took it meanwhile, wait for it to let go.
        for attempt in 1.. {
            match owned.launch(self.port) {
                Ok(()) => return,
                Err(log) if attempt < RESTART_BIND_ATTEMPTS && log.contains("could not bind") => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(log) => panic!(
                    "PostgreSQL did not start again on port {} (attempt {attempt}): {log}",
                    self.port
                ),
            }
        }
    }

    /// Stops the server without starting it again (until [`restart`](Self::restart)).
    pub fn stop(&self) {
        if let Some(owned) = &self.owned {
            owned.stop();
        }
    }

    /// Runs one SQL statement on `url` with `psql` (outside any transaction, as `CREATE
    /// DATABASE` needs); answers its unaligned output.
    pub fn psql(url: &str, sql: &str) -> String {
        let output = Command::new(bindir().join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                url,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql `{sql}` on {url} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Owned {
    fn launch(&self, port: u16) -> Result<(), String> {
        let log_path = self.directory.join("log");
        let log = fs_err::File::create(&log_path)
            .expect("create the server log")
            .into_parts()
            .0;
        if let Some((uid, gid)) = self.user {
            chown(&log_path, uid, gid);
        }
        let mut command = Command::new(self.bindir.join("postgres"));
        command
            .arg("-D")
            .arg(self.directory.join("data"))
            .args(["-p", &port.to_string(), "-k"])
            .arg(&self.directory)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=400",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        run_as(&mut command, self.user);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (started, child) = mpsc::channel::<std::io::Result<u32>>();
        let (stop, stopped) = mpsc::channel::<libc::c_int>();
        let thread = std::thread::Builder::new()
            .name("postgres-keeper".to_string())
            .spawn(move || match command.spawn() {
                Ok(mut server) => {
                    let _ = started.send(Ok(server.id()));
                    // Until told to stop, or the server ends by itself.
                    let first = stopped.recv().unwrap_or(libc::SIGINT);
                    shut_down(&mut server, first);
                }
                Err(error) => {
                    let _ = started.send(Err(error));
                }
            })
            .expect("start the keeper thread");
        let pid = child
            .recv()
            .expect("the keeper answers")
            .expect("start postgres");
        *self.keeper.lock().unwrap_or_else(|p| p.into_inner()) = Some(Keeper { stop, thread });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Through this cluster's own socket directory: on 127.0.0.1 another process's
            // server on a port taken meanwhile would answer for ours.
            let ready = Command::new(self.bindir.join("pg_isready"))
                .arg("-q")
                .arg("-h")
                .arg(&self.directory)
                .args(["-p", &port.to_string()])
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return Ok(());
            }
            // SAFETY: kill with signal 0 only checks that the process exists.
            let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0 && !exited(pid);
            if !alive || Instant::now() > deadline {
                self.stop();
                let mut text = String::new();
                let _ = fs_err::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut text));
                return Err(text);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&self) {
        self.stop_with(None);
    }

    /// Stops the server: fast shutdown, or starting with `signal`.
    fn stop_with(&self, signal: Option<libc::c_int>) {
        let keeper = self.keeper.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(Keeper { stop, thread }) = keeper {
            if let Some(signal) = signal {
                let _ = stop.send(signal);
            }
            drop(stop);
            let _ = thread.join();
        }
    }
}

/// Fast shutdown (SIGINT), then immediate (SIGQUIT) after 10 s, then SIGKILL; starting at
/// `first` of these.
fn shut_down(server: &mut Child, first: libc::c_int) {
    let steps = [(libc::SIGINT, 10), (libc::SIGQUIT, 5), (libc::SIGKILL, 5)];
    let start = steps
        .iter()
        .position(|&(signal, _)| signal == first)
        .unwrap_or(0);
    for &(signal, wait) in &steps[start..] {
        // SAFETY: signals our own child.
        unsafe { libc::kill(server.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + Duration::from_secs(wait);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `pid` (our child) is a zombie: exited but not yet reaped.
fn exited(pid: u32) -> bool {
    fs_err::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(owned) = &self.owned {
            owned.stop();
            let _ = fs_err::remove_dir_all(&owned.directory);
        }
    }
}

/// A fresh, empty database for one test, dropped (with its sessions) afterwards.
pub struct TestDatabase {
    /// `postgres://tilebox@127.0.0.1:PORT/tilebox_<hex>`
    pub url: String,
    pub name: String,
    pub cluster: Arc<TestCluster>,
}

impl TestDatabase {
    /// On the shared cluster ([`TestCluster::shared`]).
    pub fn create() -> TestDatabase {
        Self::create_on(TestCluster::shared())
    }

    pub fn create_on(cluster: Arc<TestCluster>) -> TestDatabase {
        let name = format!("tilebox_test_{}_{}", std::process::id(), unique());
        TestCluster::psql(&cluster.admin_url, &format!("CREATE DATABASE {name}"));
        let url = match cluster.admin_url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("the admin URL {} names no database", cluster.admin_url),
        };
        TestDatabase { url, name, cluster }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Best effort: a cluster a test stopped takes its databases with it.
        let _ = Command::new(bindir().join("psql"))
            .args(["-X", "-q", "-d", &self.cluster.admin_url, "-c", &sql])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos() as u64);
    (nanos << 16) | NEXT.fetch_add(1, Ordering::Relaxed)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn port_of(url: &str) -> u16 {
    url.rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next()?.parse().ok())
        .unwrap_or(5432)
}

fn temp_directory() -> PathBuf {
    let directory =
        std::env::temp_dir().join(format!("tilebox-pg-{}-{}", std::process::id(), unique()));
    fs_err::create_dir(&directory).expect("create the cluster directory");
    directory
}

/// The `postgres` user's uid and gid when running as root (initdb refuses root).
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    // SAFETY: a NUL-terminated name; the answer is read at once, before any other call.
    let entry = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(
        !entry.is_null(),
        "running as root, the tests run PostgreSQL as the `postgres` user, which Debian's \
         package creates; it does not exist"
    );
    // SAFETY: checked non-null above.
    let entry = unsafe { &*entry };
    Some((entry.pw_uid, entry.pw_gid))
}

fn run_as(command: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|error| panic!("chown {} to postgres: {error}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_serves_a_database_and_restarts() {
        let cluster = Arc::new(TestCluster::start());
        let database = TestDatabase::create_on(cluster.clone());
        TestCluster::psql(
            &database.url,
            "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)",
        );
        cluster.restart();
        assert_eq!(TestCluster::psql(&database.url, "SELECT n FROM kept"), "7");
        let name = database.name.clone();
        drop(database);
        let left = TestCluster::psql(
            &cluster.admin_url,
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
        );
        assert_eq!(left, "0", "the test database is dropped");
    }

    #[test]
    fn a_crash_restart_keeps_every_acknowledged_commit_and_skips_the_checkpoint() {
        let cluster = Arc::new(TestCluster::start());
        let database = TestDatabase::create_on(cluster.clone());
        TestCluster::psql(&database.url, "CREATE TABLE kept (n int)");
        for n in 0..20 {
            TestCluster::psql(&database.url, &format!("INSERT INTO kept VALUES ({n})"));
        }
        // Not off: an acknowledged commit must be in the WAL when the server dies.
        assert_eq!(
            TestCluster::psql(&database.url, "SHOW synchronous_commit"),
            "on"
        );
        cluster.crash_restart();
        assert_eq!(
            TestCluster::psql(&database.url, "SELECT count(*), sum(n) FROM kept"),
            "20|190",
            "every acknowledged insert survives an immediate shutdown"
        );
        let log =
            fs_err::read_to_string(cluster.owned.as_ref().expect("owned").directory.join("log"))
                .expect("the server log");
        assert!(
            log.contains("not properly shut down") || log.contains("redo starts"),
            "the restart replayed the WAL, so the shutdown was immediate: {log}"
        );
    }
}
