//! Name resolution for backend hosts, on the thread that asks (config load, reload, the discovery
//! thread; never a core thread). Every address a name resolves to is returned, sorted.
//! `LLMPROXY_TEST_HOSTS` names an /etc/hosts-style file consulted first: tests use it to move a
//! name between addresses through the real binary without touching the system resolver.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Environment variable naming a hosts-style override file (tests only).
pub const TEST_HOSTS_ENV: &str = "LLMPROXY_TEST_HOSTS";

/// Every address `host` resolves to, with `port`, sorted and without duplicates; never empty.
pub fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if let Some(path) = std::env::var_os(TEST_HOSTS_ENV) {
        let text = std::fs::read_to_string(&path)?;
        let v = from_hosts(&text, host, port);
        if !v.is_empty() {
            return Ok(v);
        }
    }
    let mut v: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    v.sort();
    v.dedup();
    if v.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address"));
    }
    Ok(v)
}

/// The addresses hosts-file `text` gives `host` (`IP name [alias...]` lines, `#` comments).
pub fn from_hosts(text: &str, host: &str, port: u16) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip = words.next()?.parse::<IpAddr>().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(host)).then_some(SocketAddr::new(ip, port))
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_text_gives_every_address_of_a_name() {
        let t = "# test\n127.0.0.2 a.test other\n127.0.0.1 a.test\n127.0.0.1 A.TEST # dup\nbad line\n";
        let v = from_hosts(t, "a.test", 80);
        assert_eq!(v, vec![([127, 0, 0, 1], 80).into(), ([127, 0, 0, 2], 80).into()]);
        assert!(from_hosts(t, "b.test", 80).is_empty());
    }

    #[test]
    fn ip_literals_resolve_to_themselves() {
        assert_eq!(resolve("127.0.0.9", 5).unwrap(), vec![([127, 0, 0, 9], 5).into()]);
        assert_eq!(resolve("::1", 5).unwrap().len(), 1);
    }
}
