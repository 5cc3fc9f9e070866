//! Starts the real `llmproxy` binary on 127.0.0.1:0 with a generated config, learns its address
//! from the startup log, and stops it with SIGTERM (checking the exit code) when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Gateway {
    pub addr: SocketAddr,
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Every stdout line so far (usage records in demo mode).
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// While set, nobody reads the gateway's stderr (a stalled log pipe).
    pub log_paused: Arc<AtomicBool>,
}

/// Config text for backends at `urls`, plus `extra` TOML (sections appended as given). The spool
/// goes into the gateway's temp dir; the webhook is disabled unless `extra` sets `[usage_hook]`.
pub fn config_for(urls: &[String], extra: &str) -> String {
    let mut c = String::from("listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n");
    if !extra.contains("[runtime]") {
        c += "[runtime]\nworkers = 2\npin_cores = false\n";
    }
    if !extra.contains("[health_check]") {
        c += "[health_check]\ninterval = \"200ms\"\ntimeout = \"500ms\"\n";
    }
    if !extra.contains("[usage_hook]") {
        c += "[usage_hook]\nenabled = false\nspool_dir = \"@SPOOL@\"\n";
    }
    c += extra;
    c += "\n";
    for u in urls {
        if !extra.contains(&format!("url = \"{u}\"")) {
            c += &format!("[[backends]]\nurl = \"{u}\"\n");
        }
    }
    c
}

impl Gateway {
    /// Starts the binary with this config text (`@SPOOL@` is replaced by a temp spool dir).
    pub fn start(config: &str) -> Gateway {
        Self::start_in(tempfile::tempdir().expect("tempdir"), config, &[])
    }

    /// Starts with a given temp dir (to restart on the same spool) and extra env vars.
    pub fn start_in(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Gateway {
        let spool = dir.path().join("spool");
        let text = config.replace("@SPOOL@", &spool.display().to_string());
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmproxy"));
        cmd.arg("--config").arg(&path).stdout(Stdio::piped()).stderr(Stdio::piped()).env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn llmproxy");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        let l2 = log.clone();
        let log_paused = Arc::new(AtomicBool::new(false));
        let paused = log_paused.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(a) = line.split("listening on ").nth(1) {
                    let _ = tx.send(a.trim().to_string());
                }
                l2.lock().unwrap().push(line);
                while paused.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        let out = child.stdout.take().expect("stdout");
        let s2 = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                s2.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(a) => a.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                panic!("gateway did not start; log:\n{}", log.lock().unwrap().join("\n"));
            }
        };
        Gateway { addr, child: Some(child), dir, log, stdout, log_paused }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Replaces the config file (`@SPOOL@` as in `start`); a SIGHUP then reloads it.
    pub fn rewrite_config(&self, config: &str) {
        let text = config.replace("@SPOOL@", &self.spool_dir().display().to_string());
        let tmp = self.dir.path().join("config.toml.new");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.dir.path().join("config.toml")).expect("replace config");
    }

    /// Sends `sig` to the gateway process.
    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Number of log lines containing `needle` so far.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    /// Sends SIGHUP and waits until the gateway logged one more reload result than before;
    /// returns whether it was applied ("reload: config generation") or refused.
    pub fn reload(&self) -> bool {
        let ok0 = self.log_count("reload: config generation");
        let err0 = self.log_count("the running config stays in use");
        self.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.log_count("reload: config generation") > ok0 {
                return true;
            }
            if self.log_count("the running config stays in use") > err0 {
                return false;
            }
            assert!(Instant::now() < deadline, "no reload result logged; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("gateway did not exit after SIGTERM; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops and returns the temp dir (spool kept) for a restart.
    pub fn stop_keep_dir(mut self) -> tempfile::TempDir {
        assert_eq!(self.terminate(), Some(0), "gateway exit code; log:\n{}", self.log_text());
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(code) = self.terminate() {
            if code != 0 && !std::thread::panicking() {
                panic!("gateway exited with {code}; log:\n{}", self.log_text());
            }
        }
    }
}

/// The I/O drivers to run a test under: io_uring and epoll, or epoll alone (said on stderr) where
/// this kernel or its seccomp profile does not allow io_uring (`llmproxy drivers`).
pub fn drivers() -> Vec<&'static str> {
    let out = Command::new(env!("CARGO_BIN_EXE_llmproxy")).arg("drivers").output().expect("llmproxy drivers");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if text.lines().any(|l| l.starts_with("io_uring: available")) {
        vec!["io_uring", "epoll"]
    } else {
        eprintln!("NOTE: io_uring is not available here: epoll only ({})", text.trim());
        vec!["epoll"]
    }
}
