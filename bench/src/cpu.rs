//! The server's own CPU time, from the kernel's counters, so that a scenario can report
//! `server_cpu_us_per_op`: what one answered request costs the server, which a noisy machine
//! changes far less than throughput or latency.
//!
//! `tallyd` is a child process: its counters are `utime + stime` in `/proc/PID/stat`; so are
//! those of the PostgreSQL backends serving a run's database, summed. The
//! baseline's echo server runs inside this process on a runtime of its own whose threads all
//! carry [`ECHO_THREAD`] as their name, so its counters are the sum over those threads in
//! `/proc/self/task/*/stat`; the load generator's threads are not counted. (A child process
//! would need a second binary or a hidden subcommand and a port handshake for the same
//! figure.)

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The name of every thread of the echo server's runtime.
pub const ECHO_THREAD: &str = "tally-echo";

/// Whose CPU time to read.
#[derive(Debug, Clone)]
pub enum Server {
    /// A child process, by pid.
    Process(u32),
    /// Several processes on this machine, by pid, summed (the PostgreSQL backends of one
    /// database); one that has ended no longer counts.
    Processes(Vec<u32>),
    /// The threads of this process named [`ECHO_THREAD`].
    EchoThreads,
    /// The other threads of this process: the load generator, the clients' side of every
    /// request, which shares the machine's cores with the server it measures.
    Generator,
}

impl Server {
    /// User plus system CPU time used so far.
    pub fn cpu(&self) -> Result<Duration> {
        let ticks = match self {
            Server::Process(pid) => {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
                stat_ticks(&stat)?.1
            }
            Server::Processes(pids) => {
                let mut total = 0;
                for pid in pids {
                    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                        continue;
                    };
                    total += stat_ticks(&stat)?.1;
                }
                total
            }
            Server::EchoThreads => own_threads(true)?,
            Server::Generator => own_threads(false)?,
        };
        Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()?))
    }

    /// Starts measuring.
    pub fn meter(&self) -> Result<Meter> {
        Ok(Meter {
            server: self.clone(),
            start: self.cpu()?,
        })
    }
}

/// CPU time of a server from a starting point.
#[derive(Debug)]
pub struct Meter {
    server: Server,
    start: Duration,
}

impl Meter {
    /// Microseconds of server CPU per operation since the meter started, to 0.1 µs.
    pub fn us_per_op(&self, ops: usize) -> Result<f64> {
        let used = self.server.cpu()?.saturating_sub(self.start);
        Ok(per_op(used, ops))
    }
}

/// `used` spread over `ops`, in microseconds to one decimal.
pub fn per_op(used: Duration, ops: usize) -> f64 {
    (used.as_secs_f64() * 1e6 / ops.max(1) as f64 * 10.0).round() / 10.0
}

/// `utime + stime` of this process's threads named [`ECHO_THREAD`] (`echo`) or of all the
/// others. A thread that ended meanwhile no longer counts.
fn own_threads(echo: bool) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) else {
            continue;
        };
        let (name, ticks) = stat_ticks(&stat)?;
        if (name == ECHO_THREAD) == echo {
            total += ticks;
        }
    }
    Ok(total)
}

/// The kernel's clock ticks per second (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks() -> Result<f64> {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)? {
        Some(ticks) if ticks > 0 => Ok(ticks as f64),
        _ => bail!("the kernel reports no clock tick rate"),
    }
}

/// The command name and `utime + stime` (in clock ticks) of a `/proc/.../stat` line.
fn stat_ticks(stat: &str) -> Result<(&str, u64)> {
    // The name is in parentheses and may hold spaces or parentheses itself: it ends at the
    // last `)`.
    let (open, close) = stat
        .find('(')
        .zip(stat.rfind(')'))
        .context("no command name in stat")?;
    let name = &stat[open + 1..close];
    // Fields from the third (state) on; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .context("stat is too short")?
            .parse()
            .with_context(|| format!("field {n} of stat is not a number"))
    };
    Ok((name, field(14)? + field(15)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_read_past_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (tally (x) y) S 1 2 3 4 5 6 7 8 9 10 170 30 0 0 20 0 1 0";
        assert_eq!(stat_ticks(stat).unwrap(), ("tally (x) y", 200));
        assert!(stat_ticks("1 (short) S 1 2").is_err());
    }

    #[test]
    fn this_process_and_its_named_threads_are_measured() {
        // The named thread spins until this thread, reading the counters itself, sees it
        // credited with 150 ms of CPU. Only CPU time bounds the wait, so the test does not
        // depend on how busy the machine is; and the counters are compared only as this one
        // thread reads them (a thread reading its own counters can see a figure that another
        // thread reads a few ticks lower a moment later).
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinning = stop.clone();
        let busy = std::thread::Builder::new()
            .name(ECHO_THREAD.into())
            .spawn(move || {
                let mut x = 0u64;
                while !spinning.load(std::sync::atomic::Ordering::Relaxed) {
                    for _ in 0..100_000 {
                        x = x.wrapping_add(std::hint::black_box(1));
                    }
                }
                x
            })
            .unwrap();
        let pid = std::process::id();
        let outcome = loop {
            let threads = Server::EchoThreads.cpu().unwrap();
            let process = Server::Process(pid).cpu().unwrap();
            if threads >= Duration::from_millis(150) && process >= threads {
                break Ok(());
            }
            // The spinning thread alone gives the process a second of CPU in about a second
            // of its own running time: by then its counters should have shown 150 ms.
            if process >= Duration::from_secs(5) {
                break Err(format!(
                    "the process used {process:?} of CPU, its named threads {threads:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        busy.join().unwrap();
        outcome.unwrap();
    }

    #[test]
    fn cost_per_op_is_rounded_to_a_tenth_of_a_microsecond() {
        assert_eq!(per_op(Duration::from_millis(5), 3), 1666.7);
        assert_eq!(per_op(Duration::ZERO, 0), 0.0);
    }
}
