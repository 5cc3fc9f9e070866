//! null-relay: the floor under any HTTP proxy on this setup. One thread, level-triggered epoll; each
//! client connection gets its own backend connection and bytes are copied both ways unparsed.
//!
//! It makes the same four socket operations per request as a proxy (client read, backend write,
//! backend read, client write) and nothing else: no HTTP parsing, no header rewriting, no metering.
//! `scripts/bench.sh` runs it as the "floor" contender: its CPU time per request is the kernel's
//! share that no proxy design built on those four operations can go below.
//!
//!   null-relay --listen 127.0.0.1:18010 --backend 127.0.0.1:18001

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

const BUF: usize = 16 * 1024;

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

fn epoll_add(ep: i32, fd: i32, token: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes all of `data`, waiting (spinning on WouldBlock) if the peer's buffer is full: good
/// enough for the small request and response bodies of the benchmark.
fn write_all(s: &mut TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match s.write(data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A listener with SO_REUSEPORT, so that several copies can share the port (the streams benchmark
/// runs more than one where one process's open-files limit cannot hold every stream).
fn reuse_port_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else { return Err(std::io::Error::other("--listen: IPv4 only")) };
    // SAFETY: plain syscalls on a socket this function owns; every result is checked, and the fd is
    // handed to a TcpListener (which closes it) right after it is created.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let listener = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            let p = &one as *const libc::c_int as *const libc::c_void;
            if libc::setsockopt(fd, libc::SOL_SOCKET, opt, p, std::mem::size_of::<libc::c_int>() as u32) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let sa = &sin as *const libc::sockaddr_in as *const libc::sockaddr;
        if libc::bind(fd, sa, std::mem::size_of::<libc::sockaddr_in>() as u32) < 0
            || libc::listen(fd, 65535) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(listener)
    }
}

fn main() -> std::io::Result<()> {
    let (Some(listen), Some(backend)) = (arg("--listen"), arg("--backend")) else {
        eprintln!("usage: null-relay --listen ADDR --backend ADDR");
        std::process::exit(2);
    };
    let backend: SocketAddr = backend.parse().map_err(|_| std::io::Error::other("bad --backend address"))?;
    let listen: SocketAddr = listen.parse().map_err(|_| std::io::Error::other("bad --listen address"))?;
    let listener = reuse_port_listener(listen)?;
    listener.set_nonblocking(true)?;
    // SAFETY: plain syscall; the result is checked.
    let ep = unsafe { libc::epoll_create1(0) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Token 0: the listener. Token 2k+1 / 2k+2: client / backend side of pair k.
    epoll_add(ep, listener.as_raw_fd(), 0)?;
    let mut pairs: Vec<Option<[TcpStream; 2]>> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; BUF];
    loop {
        // SAFETY: `events` has room for `events.len()` entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let token = ev.u64;
            if token == 0 {
                while let Ok((client, _)) = listener.accept() {
                    let Ok(up) = TcpStream::connect(backend) else { continue };
                    for s in [&client, &up] {
                        s.set_nodelay(true)?;
                        s.set_nonblocking(true)?;
                    }
                    let k = pairs.len() as u64;
                    epoll_add(ep, client.as_raw_fd(), 2 * k + 1)?;
                    epoll_add(ep, up.as_raw_fd(), 2 * k + 2)?;
                    pairs.push(Some([client, up]));
                }
                continue;
            }
            let k = ((token - 1) / 2) as usize;
            let from = ((token - 1) % 2) as usize;
            let Some(Some(pair)) = pairs.get_mut(k) else { continue };
            let (a, b) = pair.split_at_mut(1);
            let (src, dst) = if from == 0 { (&mut a[0], &mut b[0]) } else { (&mut b[0], &mut a[0]) };
            let done = match src.read(&mut buf) {
                Ok(0) => true,
                Ok(m) => write_all(dst, &buf[..m]).is_err(),
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            if done {
                // Dropping both streams closes them and removes them from the epoll set.
                pairs[k] = None;
            }
        }
    }
}
