//! A real `redis-server` for a test: started on a free 127.0.0.1 port with persistence off in a
//! temp dir, killed when dropped. Missing `redis-server`: the test is skipped, or fails under CI.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

/// Whether `redis-server` can run here; under `CI=true` a missing one fails the test.
pub fn redis_available() -> bool {
    let ok = Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "redis-server is missing (scripts/test.sh installs it: apt-get install redis-server)"
        );
        eprintln!("skipped: redis-server not found (apt-get install redis-server)");
    }
    ok
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_on(free_port())
    }

    /// Starts on `port` (e.g. again after `kill`, to test reconnecting).
    pub fn start_on(port: u16) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let r = Redis { port, child: Some(child), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Sends one command; returns the first line of the reply (None when unreachable).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req += &format!("${}\r\n{a}\r\n", a.len());
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        // Enough for the small replies tests ask for.
        loop {
            let n = s.read(&mut buf).ok()?;
            got.extend_from_slice(&buf[..n]);
            if n == 0 || got.ends_with(b"\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&got).to_string();
        Some(if text.starts_with('*') { text } else { text.lines().next().unwrap_or("").to_string() })
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
