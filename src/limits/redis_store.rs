//! The Redis side of leasing, on the sync thread only: one blocking connection (short timeouts),
//! one Lua script, and every tick's operations sent as one pipeline (one round trip).
//!
//! Keys: `llmproxy:rl:<subject>:<rpm|tpm|tpd>:<slice>` hold the units the fleet has charged to that
//! slice (1 s slices for the per-minute limits, one per UTC day for the budget), expiring after the
//! window. `SYNC` first applies a gateway's corrections (moving its charges to the slices where they
//! were used, see `sync.rs`), then sums the window's slices and grants `min(want, limit - sum)`
//! (near the limit at most half of what is left, but at least `need`), adding the grant to the
//! current slice, atomically: N gateways can never be granted more than the limit together.
//! `llmproxy:rl:fleet` is a sorted set of live gateways (score: last tick, ms), for the fleet size.

use redis::{Connection, Value};
use std::time::Duration;

const SYNC: &str = r#"
local prefix, cur, n, limit, want, need, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
for i = 8, #ARGV - 1, 2 do
  local s, d = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if d ~= 0 and s > cur - n and s <= cur then
    local k = prefix .. s
    if redis.call('INCRBY', k, d) <= 0 then redis.call('DEL', k) else redis.call('EXPIRE', k, ttl) end
  end
end
local keys = {}
for s = cur - n + 1, cur do keys[#keys + 1] = prefix .. s end
local used = 0
for _, v in ipairs(redis.call('MGET', unpack(keys))) do
  if v then used = used + tonumber(v) end
end
local avail = limit - used
local grant = math.min(want, math.max(need, math.ceil(avail / 2)), avail)
if grant < 0 then grant = 0 end
if grant > 0 then
  redis.call('INCRBY', prefix .. cur, grant)
  redis.call('EXPIRE', prefix .. cur, ttl)
end
return {grant, avail - grant}
"#;

/// The sorted set of live gateways.
const FLEET: &str = "llmproxy:rl:fleet";
/// A gateway that has not ticked for this long no longer counts in the fleet.
const FLEET_TTL_MS: u64 = 3000;

/// One budget's operation of a tick.
#[derive(Debug, Clone)]
pub struct Op {
    pub prefix: String,
    pub slice: u64,
    pub slices: u64,
    pub limit: i64,
    /// Units to lease (0: only apply `adjust`).
    pub want: i64,
    /// Units wanted at once (a debt, a refused request): granted even past half of what is left.
    pub need: i64,
    pub ttl: u64,
    /// Corrections to this gateway's charges: (slice, units), applied before the lease.
    pub adjust: Vec<(u64, i64)>,
}

pub struct Store {
    url: String,
    conn: Option<Connection>,
    sha: String,
}

/// Result of a lease: (granted, remaining for the fleet after it).
pub type Grant = (i64, i64);

impl Store {
    pub fn new(url: &str) -> Store {
        Store { url: url.to_string(), conn: None, sha: redis::Script::new(SYNC).get_hash().to_string() }
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
        self.sha = redis::cmd("SCRIPT").arg("LOAD").arg(SYNC).query(&mut c)?;
        self.conn = Some(c);
        Ok(())
    }

    /// Runs `ops` in one round trip, with this gateway's fleet heartbeat when `fleet` is
    /// `Some((gateway id, now in ms))`; returns each op's grant and the fleet size (0 when not
    /// asked). On any error the connection is dropped (the caller reconnects later).
    pub fn run(&mut self, ops: &[Op], fleet: Option<(&str, u64)>) -> redis::RedisResult<(Vec<Grant>, u64)> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(redis::RedisError::from((redis::ErrorKind::Io, "not connected")));
        };
        let mut p = redis::pipe();
        for op in ops {
            let c = p.cmd("EVALSHA").arg(&self.sha).arg(0).arg(&op.prefix).arg(op.slice).arg(op.slices);
            c.arg(op.limit).arg(op.want).arg(op.need).arg(op.ttl);
            for &(slice, units) in &op.adjust {
                c.arg(slice).arg(units);
            }
        }
        if let Some((id, now_ms)) = fleet {
            p.cmd("ZADD").arg(FLEET).arg(now_ms).arg(id).ignore();
            p.cmd("ZREMRANGEBYSCORE")
                .arg(FLEET)
                .arg("-inf")
                .arg(now_ms.saturating_sub(FLEET_TTL_MS))
                .ignore();
            p.cmd("PEXPIRE").arg(FLEET).arg(FLEET_TTL_MS * 4).ignore();
            p.cmd("ZCARD").arg(FLEET);
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
        for _ in ops {
            let g: Vec<i64> = match values.next() {
                Some(v) => redis::from_redis_value(v)?,
                None => Vec::new(),
            };
            out.push((g.first().copied().unwrap_or(0), g.get(1).copied().unwrap_or(0)));
        }
        let fleet = match (fleet, values.next()) {
            (Some(_), Some(v)) => redis::from_redis_value(v)?,
            _ => 0,
        };
        Ok((out, fleet))
    }
}
