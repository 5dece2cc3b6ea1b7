//! A Redis server of one test's own (Debian's `redis-server`, which the local stack
//! uses): to freeze, fill or kill it without disturbing the tests sharing the stack's.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateRedis {
    child: Child,
    dir: PathBuf,
    pub port: u16,
    pub url: String,
}

impl PrivateRedis {
    /// Starts one on a free port (no persistence) with `extra` arguments, and waits
    /// until it accepts connections.
    pub fn start(extra: &[&str]) -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("urna-redis-{port}"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/bootstrap.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the private redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis {
            child,
            dir,
            port,
            url: format!("redis://127.0.0.1:{port}"),
        }
    }

    /// Sends `signal` (`-STOP`, `-CONT`, …) to the server.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill {signal} {}", self.child.id());
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
