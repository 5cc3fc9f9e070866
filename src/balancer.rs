//! Choosing a backend: round robin, smooth weighted (nginx's algorithm) and least connections over
//! the backends that are up and serve the model. Health state is shared by all cores; the rotation
//! state is per core. Pure policy, no I/O.

use crate::config::{BackendConfig, Strategy};
use crate::endpoints::Endpoint;
use crate::error::GatewayError;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

/// The backends and the state every core shares: health and (for least connections) in-flight counts.
#[derive(Debug)]
pub struct BackendSet {
    pub backends: Vec<BackendConfig>,
    pub strategy: Strategy,
    up: Vec<AtomicBool>,
    inflight: Vec<AtomicU32>,
    /// `continuous_usage = "auto"` as learned by the health thread from `/v1/models` `owned_by`.
    learned_continuous: Vec<AtomicBool>,
}

impl BackendSet {
    pub fn new(backends: Vec<BackendConfig>, strategy: Strategy) -> Self {
        let n = backends.len();
        BackendSet {
            backends,
            strategy,
            up: (0..n).map(|_| AtomicBool::new(true)).collect(),
            inflight: (0..n).map(|_| AtomicU32::new(0)).collect(),
            learned_continuous: (0..n).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.up[i].load(Relaxed)
    }

    pub fn any_up(&self) -> bool {
        self.up.iter().any(|u| u.load(Relaxed))
    }

    /// Marks a backend up or down; returns whether the state changed.
    pub fn set_up(&self, i: usize, up: bool) -> bool {
        self.up[i].swap(up, Relaxed) != up
    }

    /// Whether streaming requests to backend `i` ask for continuous usage (config, else learned).
    pub fn continuous_usage(&self, i: usize) -> bool {
        match self.backends[i].continuous_usage {
            crate::config::ContinuousUsage::On => true,
            crate::config::ContinuousUsage::Off => false,
            crate::config::ContinuousUsage::Auto => self.learned_continuous[i].load(Relaxed),
        }
    }

    /// Records what the health thread learned for an `auto` backend; returns whether it changed.
    pub fn set_learned_continuous(&self, i: usize, on: bool) -> bool {
        self.learned_continuous[i].swap(on, Relaxed) != on
    }

    /// In-flight accounting, kept only for least_connections (the one strategy that needs a
    /// cross-core count; the others touch no shared counter per request).
    pub fn begin(&self, i: usize) {
        if self.strategy == Strategy::LeastConnections {
            self.inflight[i].fetch_add(1, Relaxed);
        }
    }

    pub fn end(&self, i: usize) {
        if self.strategy == Strategy::LeastConnections {
            self.inflight[i].fetch_sub(1, Relaxed);
        }
    }

    fn serves(&self, i: usize, model: Option<&str>) -> bool {
        let m = &self.backends[i].models;
        m.is_empty() || model.is_some_and(|model| m.iter().any(|x| x == model))
    }
}

/// Per-core rotation state.
#[derive(Debug)]
pub struct Balancer {
    cursor: usize,
    current: Vec<i64>,
}

impl Balancer {
    pub fn new(backends: usize, core: usize) -> Self {
        // Cores start their rotation at different backends so they do not move in lockstep.
        Balancer { cursor: core, current: vec![0; backends] }
    }

    /// Picks a backend for `model`, never `exclude` (the one a retry is moving away from) unless
    /// it is the only choice.
    pub fn pick(
        &mut self,
        set: &BackendSet,
        model: Option<&str>,
        exclude: Option<usize>,
    ) -> Result<usize, GatewayError> {
        self.pick_for(set, None, model, exclude)
    }

    /// [`pick`](Self::pick) among the backends that serve `endpoint` (`[[backends]] paths`); a
    /// path no backend serves is a 404.
    pub fn pick_for(
        &mut self,
        set: &BackendSet,
        endpoint: Option<Endpoint>,
        model: Option<&str>,
        exclude: Option<usize>,
    ) -> Result<usize, GatewayError> {
        let n = set.len();
        let path_ok = |i: usize| endpoint.is_none_or(|e| set.backends[i].paths.contains(e));
        if !(0..n).any(path_ok) {
            return Err(GatewayError::NotFound);
        }
        let mut serving = 0;
        let mut eligible = 0;
        for i in 0..n {
            if path_ok(i) && set.serves(i, model) {
                serving += 1;
                if set.is_up(i) && Some(i) != exclude {
                    eligible += 1;
                }
            }
        }
        if serving == 0 {
            return Err(GatewayError::ModelNotFound);
        }
        let allow_excluded = eligible == 0;
        let ok = |i: usize| {
            path_ok(i) && set.serves(i, model) && set.is_up(i) && (allow_excluded || Some(i) != exclude)
        };
        match set.strategy {
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
                // nginx smooth weighted round robin over the eligible backends.
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in 0..n {
                    if !ok(i) {
                        continue;
                    }
                    let w = i64::from(set.backends[i].weight);
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
                    let load = u64::from(set.inflight[i].load(Relaxed)) * 1_000_000
                        / u64::from(set.backends[i].weight);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(weights: &[u32], strategy: Strategy) -> BackendSet {
        let backends = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| BackendConfig {
                url: format!("http://b{i}"),
                addr: ([127, 0, 0, 1], 1000 + i as u16).into(),
                host_header: format!("b{i}"),
                base_path: String::new(),
                weight: w,
                models: vec![],
                api_key: None,
                tls: None,
                paths: crate::endpoints::PathSet::ALL,
                continuous_usage: crate::config::ContinuousUsage::Auto,
            })
            .collect();
        BackendSet::new(backends, strategy)
    }

    fn spread(s: &BackendSet, n: usize) -> Vec<usize> {
        let mut b = Balancer::new(s.len(), 0);
        let mut counts = vec![0; s.len()];
        for _ in 0..n {
            counts[b.pick(s, None, None).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn weighted_is_exact_and_smooth() {
        let s = set(&[5, 1, 1], Strategy::Weighted);
        assert_eq!(spread(&s, 700), [500, 100, 100]);
        // Smooth: the heavy backend never gets more than its share in a row (nginx: a a b a c a a).
        let mut b = Balancer::new(3, 0);
        let seq: Vec<usize> = (0..7).map(|_| b.pick(&s, None, None).unwrap()).collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_skips_down_backends() {
        let s = set(&[1, 1, 1], Strategy::RoundRobin);
        s.set_up(1, false);
        assert_eq!(spread(&s, 10), [5, 0, 5]);
        s.set_up(0, false);
        s.set_up(2, false);
        assert_eq!(Balancer::new(3, 0).pick(&s, None, None), Err(GatewayError::NoHealthyBackend));
    }

    #[test]
    fn least_connections_prefers_the_less_loaded() {
        let s = set(&[1, 1], Strategy::LeastConnections);
        s.begin(0);
        s.begin(0);
        s.begin(1);
        let mut b = Balancer::new(2, 0);
        assert_eq!(b.pick(&s, None, None), Ok(1));
        s.begin(1);
        s.begin(1);
        assert_eq!(b.pick(&s, None, None), Ok(0));
        s.end(1);
        s.end(1);
        s.end(1);
        assert_eq!(b.pick(&s, None, None), Ok(1));
    }

    #[test]
    fn models_route_and_exclusion_falls_back() {
        let mut s = set(&[1, 1], Strategy::RoundRobin);
        s.backends[0].models = vec!["a".into()];
        s.backends[1].models = vec!["b".into()];
        let mut b = Balancer::new(2, 0);
        for _ in 0..4 {
            assert_eq!(b.pick(&s, Some("b"), None), Ok(1));
        }
        assert_eq!(b.pick(&s, Some("zzz"), None), Err(GatewayError::ModelNotFound));
        assert_eq!(b.pick(&s, None, None), Err(GatewayError::ModelNotFound));
        // Retry exclusion: with only one candidate, it is used again.
        assert_eq!(b.pick(&s, Some("a"), Some(0)), Ok(0));
    }
}
