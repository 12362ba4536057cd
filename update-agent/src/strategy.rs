//! The one place the agent decides when to reboot into a written update:
//! the strategy (off, window, immediate, or a lock: `etcd-lock`,
//! `fleetlock`), the maintenance window (a lock strategy honours one
//! too, when set), logind's inhibitor locks, and the reboot lock, taken
//! last, after everything else allows the reboot, so a node never holds a
//! slot of the fleet's semaphore while it waits for something local.
//!
//! Time comes in as seconds ([`Gate::decide`]'s `now`), so the fleet
//! simulation runs the same decision in simulated time.

use std::sync::Mutex;

use crate::config::{Reboot, Strategy};
use crate::fleet::{self, Acquired, Lock};

/// The first pause after a lock refused or could not be reached, seconds.
pub const RETRY_MIN_SECS: u64 = 15;
/// The longest pause between lock attempts, seconds.
pub const RETRY_MAX_SECS: u64 = 300;

/// What the gate decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Reboot now. `took_lock`: this decision took the reboot lock (the
    /// caller records it before it reboots, and gives it back once the new
    /// slot is confirmed).
    Reboot {
        /// The lock was taken now.
        took_lock: bool,
    },
    /// Not now, and why (for the status and the log).
    Wait(String),
}

#[derive(Debug, Default)]
struct Retry {
    /// No lock attempt before this moment.
    next_at: u64,
    /// The pause after the next refusal.
    pause: u64,
    /// Why the last attempt did not get the lock.
    last: String,
}

/// The reboot decision for one node.
pub struct Gate {
    reboot: Reboot,
    lock: Option<Box<dyn Lock>>,
    id: String,
    retry: Mutex<Retry>,
}

impl Gate {
    /// The gate for `reboot` (opening its lock client, if any) on the node
    /// whose machine-id is `machine_id`.
    pub fn new(reboot: &Reboot, machine_id: &str) -> anyhow::Result<Gate> {
        Ok(Gate::with_lock(
            reboot,
            fleet::open(reboot)?,
            fleet::node_id(machine_id),
        ))
    }

    /// The gate with a given lock (the simulation's, a test's).
    pub fn with_lock(reboot: &Reboot, lock: Option<Box<dyn Lock>>, id: String) -> Gate {
        Gate {
            reboot: reboot.clone(),
            lock,
            id,
            retry: Mutex::new(Retry::default()),
        }
    }

    /// The reboot lock, when the strategy takes one.
    pub fn lock(&self) -> Option<&dyn Lock> {
        self.lock.as_deref()
    }

    /// The id this node holds locks under.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The first moment the lock will be asked again after a refusal (0
    /// when it may be asked now): the agent's loop asks every few seconds
    /// and is turned away before then, the simulation skips to it.
    pub fn next_attempt_at(&self) -> u64 {
        self.retry.lock().expect("retry lock").next_at
    }

    /// Whether a reboot may happen at `now` (seconds since the epoch).
    /// `held`: this node holds the lock already (taken before a reboot that
    /// did not happen). `inhibited`: logind's blocking inhibitors.
    pub fn decide(
        &self,
        now: u64,
        held: bool,
        inhibited: &dyn Fn() -> anyhow::Result<Option<String>>,
    ) -> anyhow::Result<Decision> {
        if self.reboot.strategy == Strategy::Off {
            return Ok(Decision::Wait(
                "reboot strategy is off: the operator reboots".into(),
            ));
        }
        match (&self.reboot.window, self.reboot.strategy) {
            (None, Strategy::Window) => {
                anyhow::bail!("reboot.strategy = \"window\" without a window")
            }
            (Some(w), Strategy::Window | Strategy::EtcdLock | Strategy::Fleetlock)
                if !w.contains(now) =>
            {
                return Ok(Decision::Wait(format!("outside the reboot window ({w})")));
            }
            _ => {}
        }
        if let Some(why) = inhibited()? {
            return Ok(Decision::Wait(why));
        }
        let Some(lock) = &self.lock else {
            return Ok(Decision::Reboot { took_lock: false });
        };
        if held {
            return Ok(Decision::Reboot { took_lock: false });
        }
        let mut r = self.retry.lock().expect("retry lock");
        if now < r.next_at {
            return Ok(Decision::Wait(format!(
                "{}; next try in {} s",
                r.last,
                r.next_at - now
            )));
        }
        let why = match lock.acquire(&self.id) {
            Ok(Acquired::Held) => {
                *r = Retry::default();
                return Ok(Decision::Reboot { took_lock: true });
            }
            Ok(Acquired::Refused(why)) => why,
            Err(e) => format!(
                "the reboot lock ({}) did not answer: {e:#}",
                lock.describe()
            ),
        };
        r.pause = r.pause.clamp(RETRY_MIN_SECS, RETRY_MAX_SECS);
        // ±25 %, so the nodes a full lock turned away do not come back in
        // step.
        let spread = r.pause / 2;
        let wait = r.pause - r.pause / 4 + fleet::jitter_below(spread + 1);
        r.next_at = now + wait;
        r.pause = (r.pause * 2).min(RETRY_MAX_SECS);
        r.last = why.clone();
        Ok(Decision::Wait(why))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use drover_core::agent_config::{ClockTime, Weekday, Window, WindowLength};

    use super::*;
    use crate::fleet::{Failures, LockStatus};

    /// Stands in for a lock server: grants while `free` is above 0, counts
    /// the attempts, or fails like a server that is down.
    struct TestLock {
        free: AtomicU32,
        attempts: Arc<AtomicU32>,
        down: bool,
    }

    impl Lock for TestLock {
        fn describe(&self) -> String {
            "test lock".into()
        }
        fn group(&self) -> &str {
            "default"
        }
        fn acquire(&self, _id: &str) -> anyhow::Result<Acquired> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.down {
                anyhow::bail!("connection refused");
            }
            if self.free.load(Ordering::SeqCst) == 0 {
                return Ok(Acquired::Refused("the reboot lock is full".into()));
            }
            self.free.fetch_sub(1, Ordering::SeqCst);
            Ok(Acquired::Held)
        }
        fn release(&self, _id: &str) -> anyhow::Result<bool> {
            Ok(true)
        }
        fn status(&self) -> anyhow::Result<LockStatus> {
            unimplemented!()
        }
        fn set_max(&self, _max: u32) -> anyhow::Result<LockStatus> {
            unimplemented!()
        }
        fn record_failure(&self, _v: &str, _id: &str) -> anyhow::Result<Option<Failures>> {
            Ok(None)
        }
        fn failures(&self, _v: &str) -> anyhow::Result<Option<Failures>> {
            Ok(None)
        }
        fn all_failures(&self) -> anyhow::Result<Vec<Failures>> {
            Ok(Vec::new())
        }
        fn clear_failures(&self, _v: &str) -> anyhow::Result<bool> {
            Ok(false)
        }
    }

    fn gate(
        strategy: Strategy,
        window: Option<Window>,
        free: u32,
        down: bool,
    ) -> (Gate, Arc<AtomicU32>) {
        let attempts = Arc::new(AtomicU32::new(0));
        let lock: Option<Box<dyn Lock>> =
            matches!(strategy, Strategy::EtcdLock | Strategy::Fleetlock).then(|| {
                Box::new(TestLock {
                    free: AtomicU32::new(free),
                    attempts: Arc::clone(&attempts),
                    down,
                }) as Box<dyn Lock>
            });
        let reboot = Reboot {
            strategy,
            window,
            ..Reboot::default()
        };
        (Gate::with_lock(&reboot, lock, "node".into()), attempts)
    }

    fn free() -> anyhow::Result<Option<String>> {
        Ok(None)
    }

    fn saturday_0230_for_an_hour() -> Window {
        Window {
            days: vec![Weekday::Sat],
            start: ClockTime::try_from("02:30".to_string()).unwrap(),
            length_minutes: WindowLength::try_from(60).unwrap(),
        }
    }

    /// 2026-11-28 (a Saturday) 00:00 UTC.
    const SAT: u64 = 1_795_824_000;

    #[test]
    fn immediate_reboots_unless_inhibited_and_off_never() {
        let (g, _) = gate(Strategy::Immediate, None, 0, false);
        assert_eq!(
            g.decide(SAT, false, &free).unwrap(),
            Decision::Reboot { took_lock: false }
        );
        let busy = || {
            Ok(Some(
                "a shutdown inhibitor lock is held by kubelet".to_string(),
            ))
        };
        assert!(
            matches!(g.decide(SAT, false, &busy).unwrap(), Decision::Wait(w) if w.contains("kubelet"))
        );
        let (g, _) = gate(Strategy::Off, None, 0, false);
        assert!(
            matches!(g.decide(SAT, false, &free).unwrap(), Decision::Wait(w) if w.contains("off"))
        );
    }

    #[test]
    fn a_window_opens_and_closes() {
        let (g, _) = gate(
            Strategy::Window,
            Some(saturday_0230_for_an_hour()),
            0,
            false,
        );
        assert!(
            matches!(g.decide(SAT + 3600, false, &free).unwrap(), Decision::Wait(w) if w.contains("outside the reboot window (sat 02:30"))
        );
        assert_eq!(
            g.decide(SAT + 9000, false, &free).unwrap(),
            Decision::Reboot { took_lock: false }
        );
    }

    #[test]
    fn the_lock_is_taken_last_and_only_inside_the_window() {
        let (g, attempts) = gate(
            Strategy::EtcdLock,
            Some(saturday_0230_for_an_hour()),
            1,
            false,
        );
        // Outside the window, or inhibited: the lock is not even asked.
        assert!(matches!(
            g.decide(SAT, false, &free).unwrap(),
            Decision::Wait(_)
        ));
        let busy = || Ok(Some("inhibited".to_string()));
        assert!(matches!(
            g.decide(SAT + 9000, false, &busy).unwrap(),
            Decision::Wait(_)
        ));
        assert_eq!(attempts.load(Ordering::SeqCst), 0);
        assert_eq!(
            g.decide(SAT + 9000, false, &free).unwrap(),
            Decision::Reboot { took_lock: true }
        );
        // Held from before a reboot that did not happen: no new attempt.
        assert_eq!(
            g.decide(SAT + 9001, true, &free).unwrap(),
            Decision::Reboot { took_lock: false }
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_full_or_unreachable_lock_backs_off_with_jitter() {
        for down in [false, true] {
            let (g, attempts) = gate(Strategy::Fleetlock, None, 0, down);
            let mut now = SAT;
            let mut waits = Vec::new();
            for _ in 0..8 {
                match g.decide(now, false, &free).unwrap() {
                    Decision::Wait(w) => assert!(
                        w.contains(if down { "did not answer" } else { "full" }),
                        "{w}"
                    ),
                    d => panic!("{d:?}"),
                }
                // Ask every second, as the agent's loop does: only the
                // attempts past the pause reach the lock.
                let before = attempts.load(Ordering::SeqCst);
                let mut t = now + 1;
                while attempts.load(Ordering::SeqCst) == before {
                    let _ = g.decide(t, false, &free).unwrap();
                    t += 1;
                }
                waits.push(t - 1 - now);
                now = t - 1;
            }
            assert!((11..=19).contains(&waits[0]), "15 s ± 25 %: {waits:?}");
            assert!(
                waits.windows(2).take(3).all(|w| w[1] > w[0]),
                "doubling: {waits:?}"
            );
            assert!(
                waits.iter().all(|&w| w <= RETRY_MAX_SECS * 5 / 4),
                "capped: {waits:?}"
            );
        }
    }
}
