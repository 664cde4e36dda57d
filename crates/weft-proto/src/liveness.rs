//! Per-link liveness: jittered hellos, a loss-adaptive dead-neighbour
//! detector, and an ETX-like link cost from smoothed RTT and loss.
//!
//! The detector is BFD-style (a multiplier over the peer's announced hello
//! interval), but the multiplier adapts to the loss measured from gaps in
//! the hello sequence: the neighbour is declared dead once the silence is
//! long enough that, at the measured loss rate, a live link would have
//! lost that many hellos in a row with probability below
//! [`LivenessConfig::false_positive`]. A clean link is therefore detected
//! after ~3 intervals, while a link at 20 % loss needs ~9 and is reported
//! as degraded (higher cost) instead of dead.

use std::time::Duration;

use crate::time::Time;
use crate::wire::Hello;

/// Tunables of the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct LivenessConfig {
    /// Interval between hellos on a link.
    pub hello_interval: Duration,
    /// Each interval is drawn uniformly from `interval × (1 ± jitter)`.
    pub jitter: f64,
    /// Fewest consecutive missing hellos before a neighbour is dead.
    pub min_multiplier: u32,
    /// Most consecutive missing hellos waited for, however lossy the link.
    pub max_multiplier: u32,
    /// Accepted probability that a live link is declared dead per detection window.
    pub false_positive: f64,
    /// Loss rate above which a live link is reported degraded.
    pub degraded_loss: f64,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            hello_interval: Duration::from_millis(75),
            jitter: 0.1,
            min_multiplier: 3,
            max_multiplier: 12,
            false_positive: 1e-6,
            degraded_loss: 0.05,
        }
    }
}

impl LivenessConfig {
    /// RFC 8966's default timers (hello every 4 s, a neighbour is lost
    /// after missing hellos for ~3 intervals): the baseline profile.
    pub fn babel_defaults() -> Self {
        Self {
            hello_interval: Duration::from_secs(4),
            jitter: 0.1,
            min_multiplier: 3,
            max_multiplier: 3,
            false_positive: 1e-6,
            degraded_loss: 0.05,
        }
    }
}

/// Health of a link as seen by the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkHealth {
    /// No hello received yet.
    Pending,
    /// Hellos arrive with little loss.
    Up,
    /// Hellos arrive, with loss above [`LivenessConfig::degraded_loss`].
    Degraded,
    /// Silent for longer than the adaptive timeout.
    Dead,
}

/// When to send the next round of hellos: every interval ± jitter. One
/// timer per node serves all its links, so a node wakes once per interval
/// rather than once per link and interval.
#[derive(Debug, Clone)]
pub struct HelloTimer {
    next_at: Time,
    /// Random state for jitter (xorshift; deterministic given the seed).
    rng: u64,
}

impl HelloTimer {
    /// A timer that is due at `now`; `seed` drives the jitter.
    pub fn new(now: Time, seed: u64) -> Self {
        Self {
            next_at: now,
            rng: seed | 1,
        }
    }

    fn next_random(&mut self) -> f64 {
        // xorshift64*: tiny, fast, and reproducible; jitter needs no more.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether hellos are due at `now`; if so, schedules the next round.
    pub fn due(&mut self, now: Time, cfg: &LivenessConfig) -> bool {
        if now < self.next_at {
            return false;
        }
        let factor = 1.0 + cfg.jitter * (2.0 * self.next_random() - 1.0);
        self.next_at = now + cfg.hello_interval.mul_f64(factor.max(0.01));
        true
    }

    /// When the next round is due.
    pub fn next_at(&self) -> Time {
        self.next_at
    }
}

/// Liveness state of one link. Driven by the node: it calls
/// [`on_hello`](Self::on_hello) for every hello received,
/// [`hello`](Self::hello) when its [`HelloTimer`] is due, and
/// [`check_dead`](Self::check_dead) at [`dead_deadline`](Self::dead_deadline).
#[derive(Debug, Clone)]
pub struct LinkLiveness {
    tx_seq: u16,
    last_rx: Option<Rx>,
    peer_interval: Duration,
    timeout: Duration,
    loss: f64,
    srtt_us: Option<f64>,
    health: LinkHealth,
}

#[derive(Debug, Clone, Copy)]
struct Rx {
    at: Time,
    seq: u16,
    /// The peer's timestamp in that hello, echoed back for RTT.
    peer_ts_us: u32,
}

impl LinkLiveness {
    /// A new link.
    pub fn new(cfg: &LivenessConfig) -> Self {
        Self {
            tx_seq: 0,
            last_rx: None,
            peer_interval: cfg.hello_interval,
            timeout: cfg
                .hello_interval
                .mul_f64(f64::from(cfg.min_multiplier) * (1.0 + cfg.jitter)),
            loss: 0.0,
            srtt_us: None,
            health: LinkHealth::Pending,
        }
    }

    /// The next hello to send on this link.
    pub fn hello(&mut self, now: Time, cfg: &LivenessConfig) -> Hello {
        self.tx_seq = self.tx_seq.wrapping_add(1);
        let (echo_ts_us, echo_delay_100us) = match self.last_rx {
            Some(rx) => (
                rx.peer_ts_us,
                u16::try_from(now.saturating_since(rx.at).as_micros() / 100).unwrap_or(u16::MAX),
            ),
            None => (0, 0),
        };
        Hello {
            seq: self.tx_seq,
            interval_ms: u16::try_from(cfg.hello_interval.as_millis()).unwrap_or(u16::MAX),
            ts_us: now.wrapping_micros(),
            echo_ts_us,
            echo_delay_100us,
        }
    }

    /// Records a hello from the peer.
    pub fn on_hello(&mut self, now: Time, cfg: &LivenessConfig, hello: &Hello) {
        let Hello {
            seq,
            interval_ms,
            ts_us,
            echo_ts_us,
            echo_delay_100us,
        } = *hello;
        if self.health == LinkHealth::Dead {
            // A dead link stays dead: the transport must bring it up anew.
            return;
        }
        // Loss from sequence gaps, as an EWMA over hellos (1/16 per sample).
        if let Some(prev) = self.last_rx {
            let gap = seq.wrapping_sub(prev.seq);
            if gap == 0 || gap >= 0x8000 {
                return; // duplicate or reordered: ignore
            }
            let lost = f64::from(gap - 1).min(64.0);
            let samples = lost + 1.0;
            // Each lost hello is a 1-sample, the received one a 0-sample.
            let keep = (15.0f64 / 16.0).powf(samples);
            let lost_weight = if lost > 0.0 {
                // Weight of the `lost` samples before the received one.
                (15.0f64 / 16.0) * (1.0 - (15.0f64 / 16.0).powf(lost))
            } else {
                0.0
            };
            self.loss = self.loss * keep + lost_weight;
        }
        // RTT from the echo of our own timestamp.
        if echo_ts_us != 0 {
            let rtt = now
                .wrapping_micros()
                .wrapping_sub(echo_ts_us)
                .saturating_sub(u32::from(echo_delay_100us) * 100);
            if rtt < 10_000_000 {
                let rtt = f64::from(rtt);
                self.srtt_us = Some(match self.srtt_us {
                    Some(s) => s * 0.875 + rtt * 0.125,
                    None => rtt,
                });
            }
        }
        self.peer_interval = Duration::from_millis(u64::from(interval_ms.max(1)));
        self.last_rx = Some(Rx {
            at: now,
            seq,
            peer_ts_us: ts_us,
        });
        self.timeout = self.compute_timeout(cfg);
        self.health = if self.loss > cfg.degraded_loss {
            LinkHealth::Degraded
        } else {
            LinkHealth::Up
        };
    }

    /// Consecutive hellos that must be missing before the link is dead at
    /// the measured loss rate.
    pub fn multiplier(&self, cfg: &LivenessConfig) -> u32 {
        let loss = self.loss.clamp(1e-9, 0.99);
        let k = (cfg.false_positive.ln() / loss.ln()).ceil();
        (k as u32).clamp(cfg.min_multiplier, cfg.max_multiplier)
    }

    /// How long silence must last before the link is dead (recomputed at
    /// each hello: the detector consults it far more often than it changes).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn compute_timeout(&self, cfg: &LivenessConfig) -> Duration {
        // The peer's intervals are jittered up to +jitter: allow for that.
        self.peer_interval
            .mul_f64(f64::from(self.multiplier(cfg)) * (1.0 + cfg.jitter))
    }

    /// Checks for silence; returns true exactly once, when the link dies.
    pub fn check_dead(&mut self, now: Time) -> bool {
        if self.health == LinkHealth::Dead {
            return false;
        }
        let Some(rx) = self.last_rx else {
            return false;
        };
        if now >= rx.at + self.timeout {
            self.health = LinkHealth::Dead;
            return true;
        }
        false
    }

    /// When the link dies if nothing more is heard.
    pub fn dead_deadline(&self) -> Option<Time> {
        match (self.health, self.last_rx) {
            (LinkHealth::Dead, _) | (_, None) => None,
            (_, Some(rx)) => Some(rx.at + self.timeout),
        }
    }

    /// Current health.
    pub fn health(&self) -> LinkHealth {
        self.health
    }

    /// Loss rate of hellos from the peer (EWMA).
    pub fn loss(&self) -> f64 {
        self.loss
    }

    /// Smoothed round-trip time, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt_us.map(|us| Duration::from_micros(us as u64))
    }

    /// ETX-like cost: (10 + srtt in ms) / (1 - loss)^2, at least 1.
    /// Infinite while dead, and until the first RTT sample: a link must not
    /// carry routes at a guessed cost, because correcting the guess raises
    /// metrics mesh-wide and makes routes unfeasible (seqno-request storms).
    pub fn cost(&self) -> u16 {
        if matches!(self.health, LinkHealth::Dead | LinkHealth::Pending) {
            return u16::MAX;
        }
        let Some(srtt_us) = self.srtt_us else {
            return u16::MAX;
        };
        let rtt_ms = srtt_us / 1000.0;
        let delivery = (1.0 - self.loss).max(0.05);
        let cost = (10.0 + rtt_ms) / (delivery * delivery);
        cost.round().clamp(1.0, f64::from(u16::MAX - 1)) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives two ends of a link with a fixed one-way delay and a loss
    /// pattern; returns the receiver's detector when `stop` is reached.
    fn run(
        cfg: &LivenessConfig,
        delay: Duration,
        lose: impl Fn(u64) -> bool,
        sender_dies_at: Option<Time>,
        stop: Time,
    ) -> (LinkLiveness, Option<Time>) {
        let mut a = LinkLiveness::new(cfg);
        let mut b = LinkLiveness::new(cfg);
        let (mut ta, mut tb) = (
            HelloTimer::new(Time::ZERO, 1),
            HelloTimer::new(Time::ZERO, 2),
        );
        let mut in_flight: Vec<(Time, Hello)> = Vec::new();
        let mut now = Time::ZERO;
        let mut sent = 0u64;
        let mut died = None;
        let step = Duration::from_millis(1);
        while now < stop {
            let alive = sender_dies_at.is_none_or(|t| now < t);
            if alive && ta.due(now, cfg) {
                let h = a.hello(now, cfg);
                sent += 1;
                if !lose(sent) {
                    in_flight.push((now + delay, h));
                }
            }
            if tb.due(now, cfg) {
                let h = b.hello(now, cfg);
                // b's hellos feed a's RTT estimate.
                a.on_hello(now + delay, cfg, &h);
            }
            in_flight.retain(|(at, m)| {
                if *at <= now {
                    b.on_hello(now, cfg, m);
                    false
                } else {
                    true
                }
            });
            if b.check_dead(now) {
                died = Some(now);
            }
            now = now + step;
        }
        (b, died)
    }

    #[test]
    fn clean_link_is_up_and_never_declared_dead() {
        let cfg = LivenessConfig::default();
        let (b, died) = run(
            &cfg,
            Duration::from_millis(5),
            |_| false,
            None,
            Time::from_secs(30),
        );
        assert_eq!(died, None);
        assert_eq!(b.health(), LinkHealth::Up);
        assert_eq!(b.multiplier(&cfg), cfg.min_multiplier);
        assert!(b.cost() >= 10 && b.cost() < 40, "cost {}", b.cost());
    }

    #[test]
    fn dead_neighbour_detected_within_300ms() {
        let cfg = LivenessConfig::default();
        let kill = Time::from_secs(10);
        // 0.1 % loss, deterministic pattern.
        let (b, died) = run(
            &cfg,
            Duration::from_millis(5),
            |n| n % 1000 == 0,
            Some(kill),
            Time::from_secs(12),
        );
        let died = died.expect("dead neighbour not detected");
        let detect = died.saturating_since(kill);
        assert!(
            detect <= Duration::from_millis(300),
            "detected after {detect:?}"
        );
        assert_eq!(b.health(), LinkHealth::Dead);
    }

    #[test]
    fn twenty_percent_loss_is_degraded_not_dead() {
        let cfg = LivenessConfig::default();
        // Pseudo-random 20 % loss including bursts of up to 5 in a row.
        let lose = |n: u64| {
            let h = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
            h.is_multiple_of(5) || (n % 500 < 5)
        };
        let (b, died) = run(
            &cfg,
            Duration::from_millis(5),
            lose,
            None,
            Time::from_secs(120),
        );
        assert_eq!(died, None, "a lossy but live link was declared dead");
        assert_eq!(b.health(), LinkHealth::Degraded);
        assert!(b.loss() > 0.1 && b.loss() < 0.35, "loss {}", b.loss());
        assert!(b.multiplier(&cfg) >= 8);
        let clean = run(
            &cfg,
            Duration::from_millis(5),
            |_| false,
            None,
            Time::from_secs(5),
        )
        .0;
        assert!(b.cost() > clean.cost());
    }

    #[test]
    fn hellos_are_jittered_around_the_interval() {
        let cfg = LivenessConfig::default();
        let mut t = HelloTimer::new(Time::ZERO, 42);
        let mut times = Vec::new();
        let mut now = Time::ZERO;
        while times.len() < 200 {
            if t.due(now, &cfg) {
                times.push(now);
            }
            now = now + Duration::from_millis(1);
        }
        let gaps: Vec<u128> = times
            .windows(2)
            .map(|w| w[1].saturating_since(w[0]).as_millis())
            .collect();
        assert!(gaps.iter().all(|&g| (67..=83).contains(&g)), "{gaps:?}");
        assert!(gaps.iter().any(|&g| g != gaps[0]), "no jitter");
    }
}
