//! The "overloaded node" fault: a workload thread that keeps one core
//! busy and measures its own CPU time from /proc, so the CPU figure the
//! loop sees is measured, not asserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A busy workload attributed to one node.
pub struct Burner {
    stop: Arc<AtomicBool>,
    cpu: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// utime + stime of the calling thread, in clock ticks (field 14 and 15
/// of /proc/thread-self/stat, after the parenthesised name).
fn thread_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

impl Burner {
    /// Starts the workload.
    pub fn start() -> Burner {
        let stop = Arc::new(AtomicBool::new(false));
        let cpu = Arc::new(AtomicU64::new(0f64.to_bits()));
        let (s, c) = (stop.clone(), cpu.clone());
        let thread = std::thread::Builder::new()
            .name("demo-workload".into())
            .spawn(move || {
                let mut window = Instant::now();
                let mut ticks = thread_ticks();
                let mut x = 0u64;
                while !s.load(Ordering::Relaxed) {
                    // Busy work the optimiser cannot remove.
                    for i in 0..100_000u64 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(i),
                        );
                    }
                    if window.elapsed() >= Duration::from_millis(200) {
                        let now = thread_ticks();
                        if let (Some(a), Some(b)) = (ticks, now) {
                            let busy = (b - a) as f64 / TICKS_PER_SEC;
                            let pct = 100.0 * busy / window.elapsed().as_secs_f64();
                            c.store(pct.clamp(0.0, 100.0).to_bits(), Ordering::Relaxed);
                        }
                        ticks = now;
                        window = Instant::now();
                    }
                }
            })
            .ok();
        Burner { stop, cpu, thread }
    }

    /// The workload's measured CPU use over the last 200 ms, percent of a core.
    pub fn cpu_percent(&self) -> f64 {
        f64::from_bits(self.cpu.load(Ordering::Relaxed))
    }

    /// Stops the workload.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
