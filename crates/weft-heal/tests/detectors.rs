//! Each detector catches a step change and stays quiet on noise. The
//! false-positive rates (firing samples / samples) are printed:
//! `cargo test -p weft-heal --test detectors -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_heal::detect::{Alarms, DetectorConfig, SeriesDetector, is_outlier, median_mad};
use weft_heal::{MetricKind, Time};

/// Series per noise run, and samples per series: 10 × 10 000.
const SERIES: u64 = 10;
const SAMPLES: u64 = 10_000;

#[derive(Clone, Copy, Debug)]
enum Noise {
    Gaussian,
    /// Laplace noise with the same standard deviation: heavier tails.
    Laplace,
}

fn noise(rng: &mut impl Rng, kind: Noise) -> f64 {
    match kind {
        Noise::Gaussian => common::gauss(rng),
        Noise::Laplace => {
            let u: f64 = rng.random::<f64>() - 0.5;
            let b = 1.0 / 2f64.sqrt();
            -b * u.signum() * (1.0 - 2.0 * u.abs()).max(1e-12).ln()
        }
    }
}

/// Feeds CPU noise N(50, 5) to fresh detectors; returns how many samples
/// had `bit` firing, out of how many.
fn false_positives(bit: u8, kind: Noise) -> (u64, u64) {
    let cfg = DetectorConfig::default();
    let mut fired = 0;
    for s in 0..SERIES {
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + s);
        let mut d = SeriesDetector::default();
        for i in 0..SAMPLES {
            let x = (50.0 + 5.0 * noise(&mut rng, kind)).clamp(0.0, 100.0);
            let a = d.update(
                Time::from_millis(i * 1000),
                x,
                MetricKind::Cpu,
                &cfg,
                &cfg.cpu,
            );
            if a.has(bit) {
                fired += 1;
            }
        }
    }
    (fired, SERIES * SAMPLES)
}

/// Warms a detector on N(50, 5), then steps to `level`; returns after
/// how many samples of the new level `bit` fired (if within 100).
fn delay(bit: u8, level: f64, seed: u64) -> Option<u64> {
    let cfg = DetectorConfig::default();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut d = SeriesDetector::default();
    let mut t = 0;
    for _ in 0..200 {
        t += 1;
        let x = 50.0 + 5.0 * common::gauss(&mut rng);
        d.update(
            Time::from_millis(t * 1000),
            x,
            MetricKind::Cpu,
            &cfg,
            &cfg.cpu,
        );
    }
    for k in 1..=100 {
        t += 1;
        let x = (level + 5.0 * common::gauss(&mut rng)).clamp(0.0, 100.0);
        let a = d.update(
            Time::from_millis(t * 1000),
            x,
            MetricKind::Cpu,
            &cfg,
            &cfg.cpu,
        );
        if a.has(bit) {
            // The onset is near the first sample of the step (CUSUM dates
            // a change from when its sum last left zero).
            let onset = d.onset().unwrap().as_millis();
            assert!((150_000..=t * 1000).contains(&onset), "{onset}");
            return Some(k);
        }
    }
    None
}

fn report(name: &str, bit: u8) -> (f64, f64) {
    let (g, n) = false_positives(bit, Noise::Gaussian);
    let (l, _) = false_positives(bit, Noise::Laplace);
    let (rg, rl) = (g as f64 / n as f64, l as f64 / n as f64);
    println!(
        "false positives {name:9} gaussian {g:>5}/{n} = {rg:.2e}   laplace {l:>5}/{n} = {rl:.2e}"
    );
    (rg, rl)
}

#[test]
fn threshold_catches_a_step_and_is_quiet_on_noise() {
    let (g, l) = report("threshold", Alarms::THRESHOLD);
    assert_eq!(g, 0.0);
    assert!(l < 1e-4, "{l}");
    // 50 % → 97 %: fires on the second sample past 90 %.
    let d = delay(Alarms::THRESHOLD, 97.0, 1).unwrap();
    assert!(d <= 5, "{d}");
    assert_eq!(delay(Alarms::THRESHOLD, 80.0, 1), None);
}

#[test]
fn ewma_catches_a_step_and_is_quiet_on_noise() {
    let (g, l) = report("ewma_z", Alarms::EWMA);
    assert!(g < 1e-4, "{g}");
    assert!(l < 1e-3, "{l}");
    // A 6σ step below the static limit.
    let d = delay(Alarms::EWMA, 80.0, 2).unwrap();
    assert!(d <= 3, "{d}");
}

#[test]
fn cusum_catches_a_small_shift_and_is_quiet_on_noise() {
    let (g, l) = report("cusum", Alarms::CUSUM);
    assert!(g < 1e-3, "{g}");
    assert!(l < 5e-3, "{l}");
    // A 1.5σ shift: too small for the z-score, found by CUSUM.
    let mut delays = Vec::new();
    for seed in 0..20 {
        delays.push(delay(Alarms::CUSUM, 57.5, seed).unwrap());
    }
    delays.sort_unstable();
    println!(
        "cusum delay on a 1.5σ shift (samples): median {} max {}",
        delays[10], delays[19]
    );
    assert!(delays[10] <= 15, "{delays:?}");
    let z_misses = (0..20)
        .filter(|s| delay(Alarms::EWMA, 57.5, *s).is_none())
        .count();
    assert!(
        z_misses >= 10,
        "the z-score should mostly miss a 1.5σ shift: {z_misses}"
    );
}

#[test]
fn mad_catches_an_outlier_and_is_quiet_on_noise() {
    let cfg = DetectorConfig::default();
    let m = &cfg.cpu;
    for kind in [Noise::Gaussian, Noise::Laplace] {
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let (peers, cycles) = (100usize, 1000usize);
        let mut detectors = vec![SeriesDetector::default(); peers];
        let mut fired = 0u64;
        let mut values = vec![0f32; peers];
        for c in 0..cycles {
            for v in values.iter_mut() {
                *v = (50.0 + 5.0 * noise(&mut rng, kind)).clamp(0.0, 100.0) as f32;
            }
            let mut scratch = values.clone();
            let (median, mad) = median_mad(&mut scratch).unwrap();
            for (d, v) in detectors.iter_mut().zip(&values) {
                let out = is_outlier(f64::from(*v), median, mad, MetricKind::Cpu, &cfg, m);
                let rz =
                    weft_heal::detect::robust_z(f64::from(*v), median, mad, MetricKind::Cpu, m);
                if d.update_mad(Time::from_millis(c as u64), out, rz, &cfg)
                    .has(Alarms::MAD)
                {
                    fired += 1;
                }
            }
        }
        let n = (peers * cycles) as u64;
        println!(
            "false positives mad       {kind:?}: {fired}/{n} = {:.2e}",
            fired as f64 / n as f64
        );
        assert!((fired as f64 / n as f64) < 1e-4, "{kind:?}: {fired}");
    }
    // One peer at 95 % among 99 at N(50, 5): flagged on the second cycle.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut d = SeriesDetector::default();
    let mut flagged = None;
    for c in 0..5u64 {
        let mut values: Vec<f32> = (0..99)
            .map(|_| (50.0 + 5.0 * common::gauss(&mut rng)) as f32)
            .collect();
        values.push(95.0);
        let (median, mad) = median_mad(&mut values.clone()).unwrap();
        let out = is_outlier(95.0, median, mad, MetricKind::Cpu, &cfg, m);
        let rz = weft_heal::detect::robust_z(95.0, median, mad, MetricKind::Cpu, m);
        if d.update_mad(Time::from_millis(c), out, rz, &cfg)
            .has(Alarms::MAD)
        {
            flagged = Some(c);
            break;
        }
    }
    assert_eq!(flagged, Some(1));
}
