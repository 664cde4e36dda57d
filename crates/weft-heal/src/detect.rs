//! The detectors: pure, incremental state machines over one series of
//! samples, plus the peer comparison (MAD) over many series.
//!
//! Every series runs three detectors on each sample, in O(1):
//!
//! - **threshold**: the value is past the metric's static limit
//!   (`threshold_consecutive` samples in a row);
//! - **EWMA z-score**: `z = (x - mean) / sigma` against an exponentially
//!   weighted mean and variance, past `z_threshold` for `z_consecutive`
//!   samples in a row;
//! - **CUSUM**: the one-sided cumulative sum `S = max(0, S + z - k)` of
//!   the same standardised values; a change point when `S > h`.
//!
//! and once per cycle the fourth compares series of one kind with each
//! other:
//!
//! - **MAD**: the robust z `0.6745 (x - median) / MAD` of each series'
//!   latest value against all fresh series of the same kind, past
//!   `mad_threshold` (and at least `mad_min_deviation` from the median)
//!   for `mad_consecutive` cycles.
//!
//! Only the harmful direction fires: up for CPU, memory, loss, RTT and
//! errors, down for the route count. The baseline (mean, variance) learns
//! only from samples within the z threshold (either way), past no limit
//! and while CUSUM suspects no change, so a fault does not teach itself into the baseline; after
//! `rebaseline_after` such samples in a row the new level is accepted.

use serde::{Deserialize, Serialize};

use crate::model::MetricKind;
use crate::time::Time;

/// Detector settings shared by every metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Samples past the static limit in a row before it counts (1 to 100).
    pub threshold_consecutive: u32,
    /// EWMA weight of a new sample (0.001 to 0.5).
    pub ewma_alpha: f64,
    /// |z| that counts as anomalous (1 to 100).
    pub z_threshold: f64,
    /// Anomalous z-scores in a row before the detector fires (1 to 100).
    pub z_consecutive: u32,
    /// Samples a series must have before the statistical detectors speak
    /// (2 to 10 000).
    pub warmup_samples: u32,
    /// CUSUM slack `k`, in standard deviations (0 to 10).
    pub cusum_k: f64,
    /// CUSUM decision limit `h`, in standard deviations (0.5 to 1000).
    pub cusum_h: f64,
    /// Robust z past which a series is an outlier among its peers (1 to
    /// 100).
    pub mad_threshold: f64,
    /// Fewest fresh peers for the MAD comparison (3 to 1 000 000).
    pub mad_min_peers: usize,
    /// Outlying cycles in a row before the MAD detector fires (1 to 100).
    pub mad_consecutive: u32,
    /// Anomalous samples in a row after which the new level becomes the
    /// baseline (1 to 1 000 000).
    pub rebaseline_after: u32,
    /// Per-metric settings.
    pub cpu: MetricConfig,
    /// Memory.
    pub memory: MetricConfig,
    /// Route count.
    pub route_count: MetricConfig,
    /// Link loss.
    pub link_loss: MetricConfig,
    /// Link RTT.
    pub link_rtt: MetricConfig,
    /// Component errors.
    pub component_errors: MetricConfig,
}

/// Settings of one metric kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// Static limit (a major incident past it), if any.
    pub threshold: Option<f64>,
    /// Critical limit (a critical incident past it), if any.
    pub critical: Option<f64>,
    /// Smallest standard deviation assumed, in the metric's unit, so a
    /// flat series does not turn every wiggle into a huge z.
    pub min_sigma: f64,
    /// Whether to compare series of this kind with their peers (MAD).
    pub mad: bool,
    /// Smallest distance from the peers' median that can be an outlier,
    /// in the metric's unit.
    pub mad_min_deviation: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            threshold_consecutive: 2,
            ewma_alpha: 0.02,
            z_threshold: 4.0,
            z_consecutive: 2,
            warmup_samples: 30,
            cusum_k: 0.5,
            cusum_h: 12.0,
            mad_threshold: 6.0,
            mad_min_peers: 10,
            mad_consecutive: 2,
            rebaseline_after: 120,
            cpu: MetricConfig {
                threshold: Some(90.0),
                critical: Some(98.0),
                min_sigma: 1.0,
                mad: true,
                mad_min_deviation: 25.0,
            },
            memory: MetricConfig {
                threshold: Some(85.0),
                critical: Some(95.0),
                min_sigma: 0.5,
                mad: true,
                mad_min_deviation: 25.0,
            },
            route_count: MetricConfig {
                threshold: None,
                critical: None,
                min_sigma: 1.0,
                mad: false,
                mad_min_deviation: 0.0,
            },
            link_loss: MetricConfig {
                threshold: Some(5.0),
                critical: Some(25.0),
                min_sigma: 0.5,
                mad: true,
                mad_min_deviation: 2.0,
            },
            link_rtt: MetricConfig {
                threshold: None,
                critical: None,
                min_sigma: 2.0,
                mad: true,
                mad_min_deviation: 50.0,
            },
            component_errors: MetricConfig {
                threshold: Some(10.0),
                critical: Some(50.0),
                min_sigma: 0.5,
                mad: false,
                mad_min_deviation: 0.0,
            },
        }
    }
}

impl DetectorConfig {
    /// The settings of one metric kind.
    pub fn metric(&self, kind: MetricKind) -> &MetricConfig {
        match kind {
            MetricKind::Cpu => &self.cpu,
            MetricKind::Memory => &self.memory,
            MetricKind::RouteCount => &self.route_count,
            MetricKind::LinkLoss => &self.link_loss,
            MetricKind::LinkRtt => &self.link_rtt,
            MetricKind::ComponentErrors => &self.component_errors,
        }
    }

    /// Refuses settings out of range, naming the key.
    pub fn check(&self) -> Result<(), (String, String)> {
        fn range<T: PartialOrd + std::fmt::Display>(
            key: &str,
            v: T,
            lo: T,
            hi: T,
        ) -> Result<(), (String, String)> {
            if v >= lo && v <= hi {
                Ok(())
            } else {
                Err((key.to_owned(), format!("{v} is outside {lo} to {hi}")))
            }
        }
        range(
            "detect.threshold_consecutive",
            self.threshold_consecutive,
            1,
            100,
        )?;
        range("detect.ewma_alpha", self.ewma_alpha, 0.001, 0.5)?;
        range("detect.z_threshold", self.z_threshold, 1.0, 100.0)?;
        range("detect.z_consecutive", self.z_consecutive, 1, 100)?;
        range("detect.warmup_samples", self.warmup_samples, 2, 10_000)?;
        range("detect.cusum_k", self.cusum_k, 0.0, 10.0)?;
        range("detect.cusum_h", self.cusum_h, 0.5, 1000.0)?;
        range("detect.mad_threshold", self.mad_threshold, 1.0, 100.0)?;
        range("detect.mad_min_peers", self.mad_min_peers, 3, 1_000_000)?;
        range("detect.mad_consecutive", self.mad_consecutive, 1, 100)?;
        range(
            "detect.rebaseline_after",
            self.rebaseline_after,
            1,
            1_000_000,
        )?;
        for kind in MetricKind::ALL {
            let m = self.metric(kind);
            let key = |k: &str| format!("detect.{}.{k}", kind.as_str());
            let max = kind.max_value();
            for (name, v) in [("threshold", m.threshold), ("critical", m.critical)] {
                if let Some(v) = v {
                    range(&key(name), v, 0.0, max)?;
                }
            }
            if let (Some(t), Some(c)) = (m.threshold, m.critical)
                && c < t
            {
                return Err((key("critical"), format!("{c} is below the threshold {t}")));
            }
            range(&key("min_sigma"), m.min_sigma, 1e-6, max)?;
            range(&key("mad_min_deviation"), m.mad_min_deviation, 0.0, max)?;
        }
        Ok(())
    }
}

/// The detectors that fired, as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Alarms(pub u8);

impl Alarms {
    /// The static limit.
    pub const THRESHOLD: u8 = 1;
    /// The EWMA z-score.
    pub const EWMA: u8 = 2;
    /// The CUSUM change point.
    pub const CUSUM: u8 = 4;
    /// The MAD peer comparison.
    pub const MAD: u8 = 8;

    /// Whether any fired.
    pub fn any(self) -> bool {
        self.0 != 0
    }

    /// Whether `bit` fired.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// Which way is harmful for a metric.
fn direction(kind: MetricKind) -> f64 {
    match kind {
        MetricKind::RouteCount => -1.0,
        _ => 1.0,
    }
}

/// The detector state of one series (no allocation).
#[derive(Clone, Debug, Default)]
pub struct SeriesDetector {
    mean: f64,
    var: f64,
    /// Welford's sum of squares, during the warm-up.
    m2: f64,
    /// Samples seen (saturating).
    n: u32,
    threshold_run: u16,
    z_run: u16,
    mad_run: u16,
    anomalous_run: u32,
    cusum: f64,
    /// When the current runs started (the onset of what fired).
    threshold_start: Option<Time>,
    z_start: Option<Time>,
    cusum_start: Option<Time>,
    mad_start: Option<Time>,
    last_z: f32,
    last_rz: f32,
    alarms: Alarms,
}

impl SeriesDetector {
    /// Feeds one sample; returns the detectors firing after it.
    pub fn update(
        &mut self,
        at: Time,
        x: f64,
        kind: MetricKind,
        cfg: &DetectorConfig,
        m: &MetricConfig,
    ) -> Alarms {
        let dir = direction(kind);
        let mut bits = self.alarms.0 & Alarms::MAD;

        // Static limit.
        let past = match m.threshold {
            Some(t) => dir * (x - t) > 0.0,
            None => false,
        };
        if past {
            if self.threshold_run == 0 {
                self.threshold_start = Some(at);
            }
            self.threshold_run = self.threshold_run.saturating_add(1);
            if u32::from(self.threshold_run) >= cfg.threshold_consecutive {
                bits |= Alarms::THRESHOLD;
            }
        } else {
            self.threshold_run = 0;
            self.threshold_start = None;
        }

        if self.n < cfg.warmup_samples {
            // Learn the baseline: the sample mean and (unbiased) variance
            // first (Welford), then exponentially weighted.
            self.n += 1;
            let n = f64::from(self.n);
            let d = x - self.mean;
            self.mean += d / n;
            self.m2 += d * (x - self.mean);
            self.var = if self.n > 1 { self.m2 / (n - 1.0) } else { 0.0 };
            self.last_z = 0.0;
            self.alarms = Alarms(bits);
            return self.alarms;
        }

        let sigma = self.var.sqrt().max(m.min_sigma);
        let z = dir * (x - self.mean) / sigma;
        self.last_z = z as f32;

        // EWMA z-score.
        if z > cfg.z_threshold {
            if self.z_run == 0 {
                self.z_start = Some(at);
            }
            self.z_run = self.z_run.saturating_add(1);
            if u32::from(self.z_run) >= cfg.z_consecutive {
                bits |= Alarms::EWMA;
            }
        } else {
            self.z_run = 0;
            self.z_start = None;
        }

        // CUSUM, capped so it falls below `h` soon after the shift ends. It
        // starts once the baseline has had twice the warm-up, as an early,
        // noisy variance estimate would make it drift.
        let cusum_z = if self.n >= cfg.warmup_samples.saturating_mul(2) {
            z
        } else {
            0.0
        };
        let before = self.cusum;
        self.cusum = (self.cusum + cusum_z - cfg.cusum_k)
            .max(0.0)
            .min(cfg.cusum_h + 4.0 * cfg.cusum_k.max(0.5));
        if before == 0.0 && self.cusum > 0.0 {
            self.cusum_start = Some(at);
        } else if self.cusum == 0.0 {
            self.cusum_start = None;
        }
        if self.cusum > cfg.cusum_h {
            bits |= Alarms::CUSUM;
        }

        // The baseline learns only from normal samples: not past the
        // limits, and within the z threshold either way (a harmless spike
        // must not inflate the variance either).
        // While CUSUM suspects a change (past h/2) it stops learning too, or
        // a small shift would be learnt before it is found.
        let anomalous = z.abs() > cfg.z_threshold
            || self.cusum > cfg.cusum_h / 2.0
            || bits & (Alarms::CUSUM | Alarms::THRESHOLD) != 0;
        if anomalous {
            self.anomalous_run = self.anomalous_run.saturating_add(1);
            if self.anomalous_run >= cfg.rebaseline_after {
                // A lasting new level: accept it.
                self.mean = x;
                self.cusum = 0.0;
                self.cusum_start = None;
                self.z_run = 0;
                self.z_start = None;
                self.anomalous_run = 0;
                bits &= !(Alarms::EWMA | Alarms::CUSUM);
            }
        } else {
            self.anomalous_run = 0;
            let d = x - self.mean;
            self.mean += cfg.ewma_alpha * d;
            self.var = (1.0 - cfg.ewma_alpha) * (self.var + cfg.ewma_alpha * d * d);
        }
        self.n = self.n.saturating_add(1);
        self.alarms = Alarms(bits);
        self.alarms
    }

    /// Feeds one MAD verdict and the robust z behind it (once per
    /// cycle); returns the detectors firing after it.
    pub fn update_mad(&mut self, at: Time, outlier: bool, rz: f64, cfg: &DetectorConfig) -> Alarms {
        self.last_rz = rz as f32;
        if outlier {
            if self.mad_run == 0 {
                self.mad_start = Some(at);
            }
            self.mad_run = self.mad_run.saturating_add(1);
        } else {
            self.mad_run = 0;
            self.mad_start = None;
        }
        if u32::from(self.mad_run) >= cfg.mad_consecutive {
            self.alarms.0 |= Alarms::MAD;
        } else {
            self.alarms.0 &= !Alarms::MAD;
        }
        self.alarms
    }

    /// The detectors firing now.
    pub fn alarms(&self) -> Alarms {
        self.alarms
    }

    /// When what fires now started: the earliest start among the firing
    /// detectors.
    pub fn onset(&self) -> Option<Time> {
        let a = self.alarms;
        [
            (Alarms::THRESHOLD, self.threshold_start),
            (Alarms::EWMA, self.z_start),
            (Alarms::CUSUM, self.cusum_start),
            (Alarms::MAD, self.mad_start),
        ]
        .into_iter()
        .filter(|(bit, _)| a.has(*bit))
        .filter_map(|(_, t)| t)
        .min()
    }

    /// The baseline mean.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// The baseline standard deviation (at least the metric's floor).
    pub fn sigma(&self, m: &MetricConfig) -> f64 {
        self.var.sqrt().max(m.min_sigma)
    }

    /// The z-score of the latest sample.
    pub fn last_z(&self) -> f64 {
        f64::from(self.last_z)
    }

    /// The robust z of the latest MAD comparison.
    pub fn last_robust_z(&self) -> f64 {
        f64::from(self.last_rz)
    }

    /// The CUSUM sum.
    pub fn cusum(&self) -> f64 {
        self.cusum
    }

    /// Whether the baseline is learnt.
    pub fn warm(&self, cfg: &DetectorConfig) -> bool {
        self.n >= cfg.warmup_samples
    }
}

/// Median and MAD (median absolute deviation) of `values`, reordering
/// them; `None` if empty. O(n).
pub fn median_mad(values: &mut [f32]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let median = f64::from(select_median(values));
    for v in values.iter_mut() {
        *v = (f64::from(*v) - median).abs() as f32;
    }
    let mad = f64::from(select_median(values));
    Some((median, mad))
}

fn select_median(values: &mut [f32]) -> f32 {
    let mid = values.len() / 2;
    let (_, m, _) = values.select_nth_unstable_by(mid, f32::total_cmp);
    *m
}

/// The robust z of `x` against a median and MAD, in the harmful direction
/// of `kind` (MAD floored at `min_sigma / 1.4826`).
pub fn robust_z(x: f64, median: f64, mad: f64, kind: MetricKind, m: &MetricConfig) -> f64 {
    let mad = mad.max(m.min_sigma / 1.4826);
    direction(kind) * 0.6745 * (x - median) / mad
}

/// Whether `x` is an outlier among peers with this median and MAD.
pub fn is_outlier(
    x: f64,
    median: f64,
    mad: f64,
    kind: MetricKind,
    cfg: &DetectorConfig,
    m: &MetricConfig,
) -> bool {
    robust_z(x, median, mad, kind, m) > cfg.mad_threshold
        && direction(kind) * (x - median) >= m.mad_min_deviation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mad() {
        let mut v = [1.0, 2.0, 3.0, 4.0, 100.0];
        assert_eq!(median_mad(&mut v), Some((3.0, 1.0)));
        assert_eq!(median_mad(&mut []), None);
    }

    #[test]
    fn defaults_are_valid_and_checks_name_the_key() {
        DetectorConfig::default().check().unwrap();
        let mut c = DetectorConfig::default();
        c.cpu.critical = Some(50.0);
        assert_eq!(c.check().unwrap_err().0, "detect.cpu.critical");
        let c = DetectorConfig {
            ewma_alpha: f64::NAN,
            ..DetectorConfig::default()
        };
        assert_eq!(c.check().unwrap_err().0, "detect.ewma_alpha");
    }

    #[test]
    fn route_count_drops_are_harmful() {
        let cfg = DetectorConfig::default();
        let m = &cfg.route_count;
        let mut d = SeriesDetector::default();
        let at = |d: &mut SeriesDetector, ms: u64, v: f64| {
            d.update(Time::from_millis(ms), v, MetricKind::RouteCount, &cfg, m)
        };
        for i in 0..100 {
            at(&mut d, i, 100.0);
        }
        assert!(!d.alarms().any());
        // A rise is not harmful.
        assert!(!at(&mut d, 100, 200.0).any());
        at(&mut d, 101, 100.0);
        at(&mut d, 102, 40.0);
        let a = at(&mut d, 103, 40.0);
        assert!(a.has(Alarms::EWMA) && a.has(Alarms::CUSUM), "{a:?}");
        assert_eq!(d.onset(), Some(Time::from_millis(102)));
    }
}
