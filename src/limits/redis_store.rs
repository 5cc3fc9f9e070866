//! The Redis side of leasing, on the sync thread only: one blocking connection (short timeouts),
//! two Lua scripts, and every tick's operations sent as one pipeline (one round trip).
//!
//! Keys: `llmproxy:rl:<subject>:<rpm|tpm|tpd>:<slice>` hold the units granted in that slice (1 s
//! slices for the per-minute limits, one per UTC day for the budget), expiring after the window.
//! `lease` sums the window's slices, grants `min(want, limit - sum)` and adds the grant to the
//! current slice, atomically: N gateways can never be granted more than the limit together.

use redis::{Connection, Value};
use std::time::Duration;

const LEASE: &str = r#"
local prefix, cur, n, limit, want, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local keys = {}
for s = cur - n + 1, cur do keys[#keys + 1] = prefix .. s end
local used = 0
for _, v in ipairs(redis.call('MGET', unpack(keys))) do
  if v then used = used + tonumber(v) end
end
local avail = limit - used
local grant = want
if grant > avail then grant = avail end
if grant < 0 then grant = 0 end
if grant > 0 then
  redis.call('INCRBY', prefix .. cur, grant)
  redis.call('EXPIRE', prefix .. cur, ttl)
end
return {grant, avail - grant}
"#;

/// Gives back up to ARGV[1] units of a slice that still exists (an expired slice has freed them).
const REFUND: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local d = math.min(tonumber(ARGV[1]), tonumber(v))
if d > 0 then redis.call('DECRBY', KEYS[1], d) end
return d
"#;

/// One operation of a tick.
#[derive(Debug, Clone)]
pub enum Op {
    Lease {
        prefix: String,
        slice: u64,
        slices: u64,
        limit: i64,
        want: i64,
        ttl: u64,
    },
    Refund {
        key: String,
        units: i64,
    },
    /// Usage counted locally while Redis was away, added on reconnect.
    Add {
        key: String,
        units: i64,
        ttl: u64,
    },
}

pub struct Store {
    url: String,
    conn: Option<Connection>,
    lease_sha: String,
    refund_sha: String,
}

/// Result of a lease: (granted, remaining for the fleet after it).
pub type Grant = (i64, i64);

impl Store {
    pub fn new(url: &str) -> Store {
        Store {
            url: url.to_string(),
            conn: None,
            lease_sha: redis::Script::new(LEASE).get_hash().to_string(),
            refund_sha: redis::Script::new(REFUND).get_hash().to_string(),
        }
    }

    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Connects and loads the scripts; Err leaves it disconnected.
    pub fn connect(&mut self, timeout: Duration) -> redis::RedisResult<()> {
        self.conn = None;
        let client = redis::Client::open(self.url.as_str())?;
        let mut c = client.get_connection_with_timeout(timeout)?;
        c.set_read_timeout(Some(timeout))?;
        c.set_write_timeout(Some(timeout))?;
        let a: String = redis::cmd("SCRIPT").arg("LOAD").arg(LEASE).query(&mut c)?;
        let b: String = redis::cmd("SCRIPT").arg("LOAD").arg(REFUND).query(&mut c)?;
        self.lease_sha = a;
        self.refund_sha = b;
        self.conn = Some(c);
        Ok(())
    }

    /// Runs `ops` in one round trip; returns each lease's grant (refunds and adds give None).
    /// On any error the connection is dropped (the caller reconnects later).
    pub fn run(&mut self, ops: &[Op]) -> redis::RedisResult<Vec<Option<Grant>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(redis::RedisError::from((redis::ErrorKind::Io, "not connected")));
        };
        let mut p = redis::pipe();
        for op in ops {
            match op {
                Op::Lease { prefix, slice, slices, limit, want, ttl } => {
                    p.cmd("EVALSHA")
                        .arg(&self.lease_sha)
                        .arg(0)
                        .arg(prefix)
                        .arg(*slice)
                        .arg(*slices)
                        .arg(*limit)
                        .arg(*want)
                        .arg(*ttl);
                }
                Op::Refund { key, units } => {
                    p.cmd("EVALSHA").arg(&self.refund_sha).arg(1).arg(key).arg(*units);
                }
                Op::Add { key, units, ttl } => {
                    p.cmd("INCRBY").arg(key).arg(*units).ignore();
                    p.cmd("EXPIRE").arg(key).arg(*ttl).ignore();
                }
            }
        }
        let values: Vec<Value> = match p.query(conn) {
            Ok(v) => v,
            Err(e) => {
                self.conn = None;
                return Err(e);
            }
        };
        let mut values = values.into_iter();
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Lease { .. } => {
                    let g: Vec<i64> = match values.next() {
                        Some(v) => redis::from_redis_value(v)?,
                        None => Vec::new(),
                    };
                    out.push(Some((g.first().copied().unwrap_or(0), g.get(1).copied().unwrap_or(0))));
                }
                Op::Refund { .. } => {
                    let _ = values.next();
                    out.push(None);
                }
                Op::Add { .. } => out.push(None),
            }
        }
        Ok(out)
    }
}
