//! Reconnect delays: exponential with full jitter, reset after a stable
//! session.
//!
//! Full jitter (a uniform draw between zero and the exponential ceiling)
//! spreads a thousand agents that lost the relay at the same instant over
//! the whole window instead of having them return in waves.
//!
//! The ceiling doubles from `base` up to a one-second *plateau* and stays
//! there for [`PLATEAU_ATTEMPTS`] attempts (about five seconds), so an
//! agent is back within a second of a relay that restarts quickly; only a
//! longer outage lets it double on up to `cap`.

use std::time::Duration;

use rand::Rng;

/// The ceiling the first doublings stop at, for a while.
pub const PLATEAU: Duration = Duration::from_secs(1);
/// Attempts spent at the plateau before doubling on.
pub const PLATEAU_ATTEMPTS: u32 = 10;

/// Backoff state of one connection slot.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays grow from `base` doubling to the plateau, stay there for a
    /// while, then double on up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        let doubled =
            |from: Duration, times: u32| from.saturating_mul(2u32.saturating_pow(times.min(20)));
        // Attempts before the ceiling reaches the plateau (none if `base`
        // is already at or above it).
        let plateau = PLATEAU.max(self.base);
        let to_plateau = (0..20)
            .find(|n| doubled(self.base, *n) >= plateau)
            .unwrap_or(20);
        let ceiling = if self.attempt < to_plateau {
            doubled(self.base, self.attempt)
        } else if self.attempt - to_plateau < PLATEAU_ATTEMPTS {
            plateau
        } else {
            doubled(plateau, self.attempt - to_plateau - PLATEAU_ATTEMPTS + 1)
        };
        ceiling.min(self.cap)
    }

    /// The next delay, drawn uniformly from `[0, ceiling]`; raises the
    /// ceiling for the time after.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// Back to the first step, after a session that stayed up.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn ceiling_doubles_to_the_plateau_stays_then_doubles_to_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut rng = StdRng::seed_from_u64(3);
        let mut ceilings = Vec::new();
        for _ in 0..25 {
            ceilings.push(b.ceiling());
            let d = b.next_delay(&mut rng);
            assert!(d <= *ceilings.last().unwrap());
        }
        let ms = |n| Duration::from_millis(n);
        assert_eq!(&ceilings[..4], &[ms(100), ms(200), ms(400), ms(800)]);
        assert!(
            ceilings[4..14].iter().all(|c| *c == PLATEAU),
            "{ceilings:?}"
        );
        assert_eq!(
            &ceilings[14..19],
            &[ms(2000), ms(4000), ms(8000), ms(16000), ms(30000)]
        );
        assert_eq!(ceilings[24], Duration::from_secs(30));
        b.reset();
        assert_eq!(b.ceiling(), ms(100));
    }

    #[test]
    fn a_cap_below_the_plateau_wins() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..30 {
            assert!(b.next_delay(&mut rng) <= Duration::from_millis(300));
        }
        assert_eq!(b.ceiling(), Duration::from_millis(300));
    }

    #[test]
    fn full_jitter_spreads_delays_over_the_window() {
        let mut rng = StdRng::seed_from_u64(9);
        let draws: Vec<Duration> = (0..1000)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_secs(30), Duration::from_secs(30));
                b.next_delay(&mut rng)
            })
            .collect();
        let early = draws
            .iter()
            .filter(|d| **d < Duration::from_secs(10))
            .count();
        assert!(
            (250..=420).contains(&early),
            "{early} of 1000 in the first third"
        );
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(30));
        }
    }
}
