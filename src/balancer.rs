//! Choosing an endpoint (one address of a backend): round robin, smooth weighted (nginx's
//! algorithm) and least connections over the endpoints that are up and whose backend serves the
//! model; each address of a backend has the backend's weight (as nginx does for a name with
//! several addresses). Health state is shared by all cores (in the snapshot); the rotation state is
//! per core and follows the snapshot's generation, kept by endpoint id. `busy` is the one writer of
//! an endpoint's in-flight counts. Pure policy, no I/O.

use crate::config::Strategy;
use crate::endpoints::Endpoint;
use crate::error::GatewayError;
use crate::snapshot::{EndpointId, Snapshot};

fn serves(snap: &Snapshot, e: usize, model: Option<&str>) -> bool {
    let m = &snap.backend_of(e).cfg.models;
    m.is_empty() || model.is_some_and(|model| m.iter().any(|x| x == model))
}

/// Per-core rotation state.
#[derive(Debug)]
pub struct Balancer {
    generation: u64,
    cursor: usize,
    /// Smooth weighted state, by endpoint index of `generation`'s snapshot.
    current: Vec<i64>,
    ids: Vec<EndpointId>,
}

impl Balancer {
    pub fn new(core: usize) -> Self {
        // Cores start their rotation at different endpoints so they do not move in lockstep.
        Balancer { generation: 0, cursor: core, current: Vec::new(), ids: Vec::new() }
    }

    /// Follows `snap`'s endpoints, keeping each one's state by id.
    fn sync(&mut self, snap: &Snapshot) {
        if self.generation == snap.generation && self.current.len() == snap.endpoints.len() {
            return;
        }
        let current = snap
            .endpoints
            .iter()
            .map(|e| self.ids.iter().position(|&id| id == e.id).map_or(0, |i| self.current[i]))
            .collect();
        self.current = current;
        self.ids = snap.endpoints.iter().map(|e| e.id).collect();
        self.generation = snap.generation;
    }

    /// Picks an endpoint of `snap` for `model`, never `exclude` (the one a retry is moving away
    /// from) unless it is the only choice.
    pub fn pick(
        &mut self,
        snap: &Snapshot,
        model: Option<&str>,
        exclude: Option<usize>,
    ) -> Result<usize, GatewayError> {
        self.pick_for(snap, None, model, exclude)
    }

    /// [`pick`](Self::pick) among the backends that serve `endpoint` (`[[backends]] paths`); a
    /// path no backend serves is a 404.
    pub fn pick_for(
        &mut self,
        snap: &Snapshot,
        endpoint: Option<Endpoint>,
        model: Option<&str>,
        exclude: Option<usize>,
    ) -> Result<usize, GatewayError> {
        self.sync(snap);
        let n = snap.endpoints.len();
        let up = |i: usize| snap.endpoints[i].state.is_up();
        let path_ok = |i: usize| endpoint.is_none_or(|e| snap.backend_of(i).cfg.paths.contains(e));
        if !(0..n).any(path_ok) {
            return Err(GatewayError::NotFound);
        }
        let mut serving = 0;
        let mut eligible = 0;
        for i in 0..n {
            if path_ok(i) && serves(snap, i, model) {
                serving += 1;
                if up(i) && Some(i) != exclude {
                    eligible += 1;
                }
            }
        }
        if serving == 0 {
            return Err(GatewayError::ModelNotFound);
        }
        let allow_excluded = eligible == 0;
        let ok = |i: usize| {
            path_ok(i) && serves(snap, i, model) && up(i) && (allow_excluded || Some(i) != exclude)
        };
        let weight = |i: usize| i64::from(snap.backend_of(i).cfg.weight);
        match snap.config.strategy {
            Strategy::RoundRobin => {
                for k in 0..n {
                    let i = (self.cursor + k) % n;
                    if ok(i) {
                        self.cursor = i + 1;
                        return Ok(i);
                    }
                }
                Err(GatewayError::NoHealthyBackend)
            }
            Strategy::Weighted => {
                // nginx smooth weighted round robin over the eligible endpoints.
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in 0..n {
                    if !ok(i) {
                        continue;
                    }
                    let w = weight(i);
                    self.current[i] += w;
                    total += w;
                    if best.is_none_or(|b| self.current[i] > self.current[b]) {
                        best = Some(i);
                    }
                }
                let b = best.ok_or(GatewayError::NoHealthyBackend)?;
                self.current[b] -= total;
                Ok(b)
            }
            Strategy::LeastConnections => {
                // Fewest in flight per unit of weight; ties broken by rotation.
                let mut best: Option<(u64, usize)> = None;
                for k in 0..n {
                    let i = (self.cursor + k) % n;
                    if !ok(i) {
                        continue;
                    }
                    let load = u64::from(snap.endpoints[i].state.inflight()) * 1_000_000 / weight(i) as u64;
                    if best.is_none_or(|(l, _)| load < l) {
                        best = Some((load, i));
                    }
                }
                let (_, b) = best.ok_or(GatewayError::NoHealthyBackend)?;
                self.cursor = b + 1;
                Ok(b)
            }
        }
    }
}

/// A request in flight to endpoint `e` from core `core`, counted from `busy` until the guard
/// drops: in the endpoint's shared count (least_connections only) and in the backend's per-core
/// `llmproxy_backend_inflight` gauge. The one place either count changes.
pub struct Busy<'a> {
    snap: &'a Snapshot,
    e: usize,
    core: usize,
}

pub fn busy(snap: &Snapshot, e: usize, core: usize) -> Busy<'_> {
    begin(snap, e);
    snap.backend_of(e).stats.core(core).inflight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Busy { snap, e, core }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        end(self.snap, self.e);
        let stats = &self.snap.backend_of(self.e).stats;
        stats.core(self.core).inflight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// In-flight accounting for endpoint `e`, kept only for least_connections (the one strategy that
/// needs a cross-core count; the others touch no shared counter per request). Through `Busy`.
fn begin(snap: &Snapshot, e: usize) {
    if snap.config.strategy == Strategy::LeastConnections {
        snap.endpoints[e].state.begin();
    }
}

fn end(snap: &Snapshot, e: usize) {
    if snap.config.strategy == Strategy::LeastConnections {
        snap.endpoints[e].state.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::snapshot::SnapshotCell;
    use std::sync::Arc;

    fn cell(weights: &[u32], strategy: &str, models: &[&str]) -> SnapshotCell {
        let mut t = format!("[balancer]\nstrategy = \"{strategy}\"\n");
        for (i, w) in weights.iter().enumerate() {
            t += &format!("[[backends]]\nurl = \"http://127.0.0.1:{}\"\nweight = {w}\n", 1000 + i);
            if let Some(m) = models.get(i) {
                t += &format!("models = [\"{m}\"]\n");
            }
        }
        SnapshotCell::new(Config::parse(&t, "t").unwrap(), 1).unwrap()
    }

    fn spread(s: &Snapshot, n: usize) -> Vec<usize> {
        let mut b = Balancer::new(0);
        let mut counts = vec![0; s.endpoints.len()];
        for _ in 0..n {
            counts[b.pick(s, None, None).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn weighted_is_exact_and_smooth() {
        let s = cell(&[5, 1, 1], "weighted", &[]).load();
        assert_eq!(spread(&s, 700), [500, 100, 100]);
        // Smooth: the heavy backend never gets more than its share in a row (nginx: a a b a c a a).
        let mut b = Balancer::new(0);
        let seq: Vec<usize> = (0..7).map(|_| b.pick(&s, None, None).unwrap()).collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_skips_down_endpoints() {
        let s = cell(&[1, 1, 1], "round_robin", &[]).load();
        s.endpoints[1].state.set_up(false);
        assert_eq!(spread(&s, 10), [5, 0, 5]);
        s.endpoints[0].state.set_up(false);
        s.endpoints[2].state.set_up(false);
        assert_eq!(Balancer::new(0).pick(&s, None, None), Err(GatewayError::NoHealthyBackend));
    }

    #[test]
    fn least_connections_prefers_the_less_loaded() {
        let s = cell(&[1, 1], "least_connections", &[]).load();
        begin(&s, 0);
        begin(&s, 0);
        begin(&s, 1);
        let mut b = Balancer::new(0);
        assert_eq!(b.pick(&s, None, None), Ok(1));
        begin(&s, 1);
        begin(&s, 1);
        assert_eq!(b.pick(&s, None, None), Ok(0));
        end(&s, 1);
        end(&s, 1);
        end(&s, 1);
        assert_eq!(b.pick(&s, None, None), Ok(1));
    }

    #[test]
    fn models_route_and_exclusion_falls_back() {
        let s = cell(&[1, 1], "round_robin", &["a", "b"]).load();
        let mut b = Balancer::new(0);
        for _ in 0..4 {
            assert_eq!(b.pick(&s, Some("b"), None), Ok(1));
        }
        assert_eq!(b.pick(&s, Some("zzz"), None), Err(GatewayError::ModelNotFound));
        assert_eq!(b.pick(&s, None, None), Err(GatewayError::ModelNotFound));
        // Retry exclusion: with only one candidate, it is used again.
        assert_eq!(b.pick(&s, Some("a"), Some(0)), Ok(0));
    }

    #[test]
    fn a_new_generation_keeps_smooth_state_by_endpoint_and_balances_every_address() {
        let c = cell(&[2, 1], "weighted", &[]);
        let s = c.load();
        let mut b = Balancer::new(0);
        assert_eq!(b.pick(&s, None, None), Ok(0));
        // The second backend's name now stands for two addresses: three endpoints, each with
        // its backend's weight.
        let two = vec![([127, 0, 0, 1], 1001).into(), ([127, 0, 0, 2], 1001).into()];
        c.update(|s| Some((Arc::clone(&s.config), vec![vec![], two]))).unwrap();
        let s2 = c.load();
        assert_eq!(s2.endpoints.len(), 3);
        assert_eq!(spread(&s2, 400), [200, 100, 100]);
        // Requests still on the old snapshot keep working.
        assert!(b.pick(&s, None, None).is_ok());
        assert!(b.pick(&s2, None, None).is_ok());
    }
}
