//! Running threads of calls against a mount under a watchdog: a deadlock in
//! the daemon fails the test instead of hanging it. The watchdog kills the
//! daemon (by pid) when no call has finished for a while, which aborts the
//! FUSE connection and frees every caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::LayerfsMount;

/// One thread's loop body, run until the load stops; it counts each call
/// it finishes with [`Load::done`].
pub type Worker = Box<dyn FnMut(&Load) + Send>;

pub struct Load {
    stop: AtomicBool,
    done_calls: AtomicU64,
}

impl Load {
    /// One more call finished (what the watchdog watches).
    pub fn done(&self) {
        self.done_n(1);
    }

    pub fn done_n(&self, calls: u64) {
        self.done_calls.fetch_add(calls, Ordering::Relaxed);
    }
}

/// Runs `workers` for `run_for`; kills the daemon and panics (with its
/// log) if calls stop finishing for `stall`. Returns the calls made.
pub fn run_with_watchdog(
    mount: &LayerfsMount,
    workers: Vec<Worker>,
    run_for: Duration,
    stall: Duration,
) -> u64 {
    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        done_calls: AtomicU64::new(0),
    });
    let handles: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            let load = load.clone();
            thread::spawn(move || {
                while !load.stop.load(Ordering::Relaxed) {
                    w(&load);
                }
            })
        })
        .collect();
    let start = Instant::now();
    let (mut last_count, mut last_change) = (0, Instant::now());
    let mut hung = false;
    while start.elapsed() < run_for {
        thread::sleep(Duration::from_millis(100));
        let n = load.done_calls.load(Ordering::Relaxed);
        if n != last_count {
            (last_count, last_change) = (n, Instant::now());
        } else if last_change.elapsed() > stall {
            hung = true;
            break;
        }
        if handles.iter().all(|h| h.is_finished()) {
            break; // every worker panicked: join reports why
        }
    }
    load.stop.store(true, Ordering::Relaxed);
    // Workers finish their current call; a hung one only when the daemon
    // dies, so give them `stall` before killing it.
    let deadline = Instant::now() + stall;
    while !hung && handles.iter().any(|h| !h.is_finished()) {
        if Instant::now() > deadline {
            hung = true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    if hung {
        let log = mount.log();
        if let Some(pid) = mount.pid() {
            // Our own child, by pid: its death aborts the connection.
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        for h in handles {
            let _ = h.join();
        }
        panic!(
            "no call finished for {stall:?} after {last_count} calls: the daemon hung; its log:\n{log}"
        );
    }
    for h in handles {
        if let Err(e) = h.join() {
            std::panic::resume_unwind(e);
        }
    }
    load.done_calls.load(Ordering::Relaxed)
}
