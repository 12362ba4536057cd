//! What the agent reads for fleet coordination: etcd's JSON-gateway range
//! responses (base64 keys and values, revisions as strings), the reboot
//! semaphore and a release's failure count as any node with the etcd
//! credentials may have written them, the acquire and release decisions
//! taken over them, and a FleetLock server's error body.
#![no_main]

use drover_update_agent::fleet::etcd::{give_back, range_list, range_value, take_slot, Semaphore};
use drover_update_agent::fleet::fleetlock::ErrorBody;
use drover_update_agent::fleet::{halted, Acquired, Failures};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = range_value(&v);
        let _ = range_list(&v);
    }
    if let Ok(s) = serde_json::from_slice::<Semaphore>(data) {
        let held_before = s.holders.iter().any(|h| h.id == "node-a");
        match take_slot(Some(s.clone()), "default", "node-a", 1) {
            (Some(n), Acquired::Held) => {
                assert!(!held_before);
                assert_eq!(n.holders.len(), s.holders.len() + 1);
                assert!(n.holders.len() <= n.max as usize);
            }
            (None, Acquired::Held) => assert!(held_before),
            (None, Acquired::Refused(why)) => {
                assert!(!held_before && s.holders.len() >= s.max as usize);
                assert!(why.contains("the reboot lock is full"));
            }
            (Some(_), Acquired::Refused(_)) => panic!("a refusal that changes the lock"),
        }
        if let Some(first) = s.holders.first() {
            let (after, had) = give_back(Some(s.clone()), &first.id);
            assert!(had);
            let after = after.expect("a release changes the lock");
            assert!(after.holders.iter().all(|h| h.id != first.id));
        }
        let back: Semaphore = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
    if let Ok(f) = serde_json::from_slice::<Failures>(data) {
        assert_eq!(halted(f.count(), Some(0)), true);
        let _ = halted(f.count(), Some(3));
    }
    let _ = serde_json::from_slice::<ErrorBody>(data);
});
