//! A PgBouncer of the test's own: transaction pooling on a free loopback port in front of the
//! local PostgreSQL, its config in a temp dir, stopped by PID on drop. Include it with
//! `#[path]` beside `mod support;`.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl PgBouncer {
    /// Starts `pgbouncer` with `pool_mode = transaction` and `default_pool_size` server
    /// connections per database and user, and waits (up to 10 s) until it accepts
    /// connections.
    ///
    /// # Panics
    ///
    /// When `pgbouncer` is not installed (`apt-get install -y pgbouncer`; `.ci/run` does it)
    /// or does not come up.
    pub fn start(default_pool_size: u32) -> Self {
        let port = crate::support::free_port();
        let dir = std::env::temp_dir().join(crate::support::unique("pgbouncer"));
        std::fs::create_dir_all(&dir).unwrap();
        // `extra_float_digits` and `options` are startup parameters sqlx sends; PgBouncer
        // refuses unknown ones unless told to ignore them.
        let ini = format!(
            "[databases]\n\
             * = host=127.0.0.1 port=5432\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {auth}\n\
             pool_mode = transaction\n\
             default_pool_size = {default_pool_size}\n\
             max_client_conn = 100\n\
             ignore_startup_parameters = extra_float_digits,options\n",
            auth = dir.join("userlist.txt").display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        let mut command = Command::new("pgbouncer");
        // PgBouncer refuses to run as root: it drops to `postgres` after reading its config.
        if is_root() {
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer on PATH (apt-get install -y pgbouncer)");
        let bouncer = Self { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pgbouncer did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        bouncer
    }

    /// `DATABASE_URL` with PgBouncer's port instead of PostgreSQL's.
    pub fn url(&self) -> String {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let (_, database) = url.rsplit_once('/').expect("a database in DATABASE_URL");
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
