//! A real PostgreSQL server for the tests: Debian's `postgresql` package, started in a
//! temporary folder on a free port (as an unprivileged user when the tests run as root:
//! PostgreSQL refuses to run as root) and stopped when the tests end.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The user PostgreSQL runs as when the tests run as root.
const UNPRIVILEGED_UID: u32 = 65534;

/// The folder of `initdb` and `postgres`, or a failure that says what to install.
pub fn bin_dir() -> PathBuf {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let debian = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|versions| {
        let mut dirs: Vec<PathBuf> = versions.filter_map(|v| Some(v.ok()?.path().join("bin"))).collect();
        dirs.sort();
        dirs.pop()
    });
    [from_pg_config, debian].into_iter().flatten().find(|dir| dir.join("initdb").is_file()).unwrap_or_else(|| {
        panic!(
            "these tests run a real PostgreSQL server and found none: install it \
             (Debian/Ubuntu: apt-get install postgresql, or run scripts/test.sh, which installs it; its initdb and postgres are looked for in \
             /usr/lib/postgresql/*/bin or pg_config --bindir)"
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the unprivileged user when the tests run as root.
fn as_postgres_user(program: &Path) -> Command {
    let mut command = Command::new(program);
    if running_as_root() {
        command.uid(UNPRIVILEGED_UID).gid(UNPRIVILEGED_UID);
    }
    command
}

/// One PostgreSQL server (a data folder and a `postgres` process).
pub struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    /// Removed with the server.
    _folder: Option<tempfile::TempDir>,
    port: u16,
    process: Mutex<Option<Child>>,
    /// With TLS: the server's self-signed certificate (its own CA).
    certificate: Option<PathBuf>,
}

static DATABASES: AtomicUsize = AtomicUsize::new(0);

impl PgServer {
    /// A new server of its own (e.g. to restart it mid-test), stopped when dropped.
    pub fn start() -> PgServer {
        let folder = tempfile::Builder::new().prefix("keyward-pg-").tempdir().unwrap();
        let data = folder.path().join("data");
        let server = PgServer::init(data, Some(folder));
        server.launch();
        server
    }

    /// A new server that also accepts TLS, with a certificate for localhost
    /// and 127.0.0.1 issued by a test CA (see [`PgServer::certificate`]).
    pub fn start_with_tls() -> PgServer {
        let folder = tempfile::Builder::new().prefix("keyward-pg-").tempdir().unwrap();
        let mut server = PgServer::init(folder.path().join("data"), Some(folder));
        // A CA and a server certificate it issued (TLS clients refuse a CA as the server's own).
        let ca = crate::certs::Ca::new("keyward test PostgreSQL CA");
        let (crt, key) = crate::certs::Ca::server_for(&ca, "localhost").write(&server.data, "server");
        std::fs::write(crt.with_file_name("root.crt"), &ca.pem).unwrap();
        if running_as_root() {
            for file in [&crt, &key] {
                std::os::unix::fs::chown(file, Some(UNPRIVILEGED_UID), Some(UNPRIVILEGED_UID)).unwrap();
            }
        }
        server.certificate = Some(crt);
        server.launch();
        server
    }

    /// The CA that issued the TLS server's certificate, to trust as `sslrootcert`.
    pub fn certificate(&self) -> PathBuf {
        self.certificate.as_deref().expect("a server started with TLS").with_file_name("root.crt")
    }

    fn init(data: PathBuf, folder: Option<tempfile::TempDir>) -> PgServer {
        let bin = bin_dir();
        std::fs::create_dir_all(&data).unwrap();
        if running_as_root() {
            for dir in data.ancestors().take(2) {
                std::os::unix::fs::chown(dir, Some(UNPRIVILEGED_UID), Some(UNPRIVILEGED_UID)).unwrap();
            }
        }
        let output = as_postgres_user(&bin.join("initdb"))
            .args(["-D", data.to_str().unwrap(), "-U", "keyward", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .env_clear()
            .output()
            .unwrap();
        assert!(output.status.success(), "initdb failed: {}", String::from_utf8_lossy(&output.stderr));
        PgServer { bin, data, _folder: folder, port: free_port(), process: Mutex::new(None), certificate: None }
    }

    /// Starts `postgres` and waits until it accepts connections.
    pub fn launch(&self) {
        let log = std::fs::File::create(self.data.with_file_name("postgres.log")).unwrap();
        let mut command = as_postgres_user(&self.bin.join("postgres"));
        command
            .args(["-D", self.data.to_str().unwrap(), "-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=400"])
            .args(["-c", &format!("unix_socket_directories={}", self.data.display())])
            .env_clear()
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(crt) = &self.certificate {
            let key = crt.with_file_name("server.key");
            command.args(["-c", "ssl=on", "-c", &format!("ssl_cert_file={}", crt.display())]);
            command.args(["-c", &format!("ssl_key_file={}", key.display())]);
        }
        // SAFETY: prctl is async-signal-safe. The server dies with the process that started
        // it (the test binary's keeper thread), even when the tests are killed.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                Ok(())
            });
        }
        let child = command.spawn().expect("starting postgres");
        *self.process.lock().unwrap() = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(60), "postgres did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server: `fast` lets it shut down cleanly, else it is killed as by a crash.
    pub fn stop(&self, fast: bool) {
        let Some(mut child) = self.process.lock().unwrap().take() else { return };
        let signal = if fast { libc::SIGINT } else { libc::SIGQUIT };
        // SAFETY: signalling a child we own.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let _ = child.wait();
    }

    /// Makes `role` (created, with `password`) log in over TCP with its password, as a
    /// production server asks; every other role keeps the test server's trust.
    pub async fn require_password(&self, role: &str, password: &str) {
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url("postgres")).await.unwrap();
        sqlx::query(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'")).execute(&mut admin).await.unwrap();
        self.ask_password_of(role).await;
    }

    /// Makes the existing `role` log in over TCP with its password.
    pub async fn ask_password_of(&self, role: &str) {
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url("postgres")).await.unwrap();
        let hba = self.data.join("pg_hba.conf");
        let rest = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("host all {role} 127.0.0.1/32 scram-sha-256\n{rest}")).unwrap();
        sqlx::query("SELECT pg_reload_conf()").execute(&mut admin).await.unwrap();
    }

    /// The TCP port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL of database `name` as `role`, without a password.
    pub fn url_as(&self, role: &str, name: &str) -> String {
        format!("postgres://{role}@127.0.0.1:{}/{name}", self.port)
    }

    /// Sends `signal` to the server, then to every process it started (each backend is a
    /// session of its own, so not in its process group): found in /proc by parent.
    fn signal_all(&self, signal: libc::c_int) {
        let guard = self.process.lock().unwrap();
        let postmaster = guard.as_ref().expect("the server is running").id();
        let children: Vec<u32> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                // The parent is the field after the command, which is in parentheses.
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
                after.split_whitespace().nth(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(postmaster)
            })
            .collect();
        // SAFETY: signalling processes of a server we own.
        for pid in std::iter::once(postmaster).chain(children) {
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }

    /// Stops every PostgreSQL process (SIGSTOP): connections stay open and fall silent, as
    /// with a hung host or a network that drops packets.
    pub fn pause(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    /// Lets a paused server carry on (SIGCONT).
    pub fn resume(&self) {
        self.signal_all(libc::SIGCONT);
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_file_name("postgres.log")).unwrap_or_default()
    }

    /// A URL of database `name` as user keyward.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://keyward@127.0.0.1:{}/{name}", self.port)
    }

    /// A new, empty database; returns its URL.
    pub async fn new_database(&self) -> String {
        let name = format!("t{}_{}", std::process::id(), DATABASES.fetch_add(1, Ordering::SeqCst));
        let start = Instant::now();
        loop {
            // Right after start the server may still refuse ("starting up").
            let created = async {
                let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url("postgres")).await?;
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await
            }
            .await;
            match created {
                Ok(_) => return self.url(&name),
                Err(err) if start.elapsed() > Duration::from_secs(60) => panic!("creating a database: {err}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// The shared server's folder: the prefix, then the test binary's process id.
const SHARED_PREFIX: &str = "keyward-pg-shared-";

/// The shared server outlives every destructor: its folder is removed by the next run.
fn remove_stale_folders() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(SHARED_PREFIX) else { continue };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The server the tests share (each gets a database of its own). It is started by a
/// thread that lives as long as the test binary, so it dies with the binary.
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<&'static PgServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        remove_stale_folders();
        std::thread::spawn(move || {
            let folder = std::env::temp_dir().join(format!("{SHARED_PREFIX}{}", std::process::id()));
            let server = PgServer::init(folder.join("data"), None);
            server.launch();
            let server: &'static PgServer = Box::leak(Box::new(server));
            tx.send(server).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("the PostgreSQL keeper thread failed")
    })
}

/// A fresh database on the shared server.
pub async fn fresh_database() -> String {
    shared().new_database().await
}
