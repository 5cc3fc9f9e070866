//! A real `nats-server -js` (Debian package nats-server) on a given port with its store in a temp
//! dir, for the NATS sink tests; killed when dropped. Test threads only.

use std::process::{Child, Command, Stdio};

/// The nats-server binary, if installed.
pub fn nats_server_bin() -> Option<String> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(String::from)
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `nats-server -js` on 127.0.0.1:`port` and waits until it listens.
pub fn start_nats(bin: &str, port: u16, store: &std::path::Path) -> Child {
    let c = Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    super::eventually(20, "nats-server listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    c
}

/// SIGTERM and wait (a clean broker stop).
pub fn stop_nats(mut c: Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let _ = c.wait();
}

/// Kills the broker when the test ends, whatever happened.
pub struct KillOnDrop(pub Option<Child>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
