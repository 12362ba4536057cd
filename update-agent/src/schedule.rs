//! When the agent polls its channel: the first poll soon after start
//! (within a minute, or the jitter if smaller), then every interval plus a
//! random part of the jitter, so a fleet's requests spread evenly over
//! time instead of arriving in step (the CDN's load stays flat).
//!
//! The randomness comes in as an argument (`r`, any `u64`): the agent
//! passes the OS's, the fleet simulation a seeded generator's.

/// Seconds from the agent's start to its first poll.
pub fn first_poll_delay(jitter_secs: u64, r: u64) -> u64 {
    below(60.min(jitter_secs), r)
}

/// Seconds from one poll to the next.
pub fn next_poll_delay(interval_secs: u64, jitter_secs: u64, r: u64) -> u64 {
    interval_secs + below(jitter_secs, r)
}

fn below(n: u64, r: u64) -> u64 {
    if n == 0 {
        0
    } else {
        r % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_spread_over_the_jitter() {
        assert_eq!(next_poll_delay(3600, 0, 12345), 3600);
        let d: Vec<u64> = (0..600)
            .map(|r| next_poll_delay(3600, 600, r * 7919))
            .collect();
        assert!(d.iter().all(|&x| (3600..4200).contains(&x)));
        assert!(d.iter().min().unwrap() < &3660 && d.iter().max().unwrap() > &4140);
        assert!(first_poll_delay(600, u64::MAX) < 60);
        assert_eq!(first_poll_delay(0, 99), 0);
    }
}
