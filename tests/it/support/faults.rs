//! The fault API of `scripts/moto_faults.py`, the moto server `scripts/test` starts: EC2's
//! throttling, eventual consistency and lost answers, which moto lacks, plus counts of the calls
//! by Action, older launch times, and calls held in flight. `Moto::acquire` (through
//! `/moto-api/reset`) starts every test with no fault, no hold and zeroed counts.
//!
//! ```ignore
//! let faults = moto.faults();
//! faults.configure(json!({"throttle": {"RunInstances": 2}, "not_found_secs": 5}));
//! faults.hold("RunInstances");
//! // start stratus…
//! faults.wait_held("RunInstances", 1, Duration::from_secs(30));
//! ```

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::ec2::ec2_moto::Moto;

/// The fault API of the moto server `moto` talks to.
pub struct Faults<'a> {
    moto: &'a Moto,
}

impl Moto {
    pub fn faults(&self) -> Faults<'_> {
        Faults { moto: self }
    }
}

impl Faults<'_> {
    fn call(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let path = format!("/stratus-faults/{what}");
        let (status, answer) = match body {
            Some(b) => self.moto.post(&path, &b.to_string()),
            None => self.moto.get(&path),
        };
        assert_eq!(
            status, 200,
            "{method} {path}: {answer} (is the server scripts/moto_faults.py?)"
        );
        serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {answer}"))
    }

    /// Sets faults; each key given replaces its old value, keys not given stay:
    /// `{"throttle": {"RunInstances": 3}}` answers the next 3 RunInstances with
    /// RequestLimitExceeded (not forwarded); `{"lose_answer": {"RunInstances": 1}}` forwards the
    /// next one to moto and answers 500 InternalError; `{"not_found_secs": 20}` makes each instance
    /// launched from now on unknown for 20 s to DescribeInstances (by id: NotFound; without ids:
    /// left out), TerminateInstances and CreateTags (NotFound, not forwarded);
    /// `{"idempotent_client_token": true}` answers a RunInstances whose ClientToken was answered
    /// before with that same answer, as EC2 does (moto alone launches again);
    /// `{"refuse_when": [{"action": "RunInstances", "code": "InsufficientInstanceCapacity",
    /// "when": {"SubnetId": "subnet-…"}, "times": 2}]}` answers the calls whose parameters match
    /// (at any depth) with that code, `times` times or always, before any hold (an empty `when`
    /// matches every call of the action; the HTTP status is EC2's for the code, or `"status"`);
    /// `{"buckets": {"DescribeInstances": {"burst": 100, "refill_per_sec": 20}, "*": {…}}}`
    /// throttles with a token bucket per action (`*`: each action not named gets its own bucket
    /// of those sizes), answering RequestLimitExceeded (503) without forwarding when it is empty.
    /// Returns the faults now in force.
    pub fn configure(&self, config: Value) -> Value {
        self.call("POST", "config", Some(config))
    }

    /// Clears faults, holds (releasing held calls), counts and tracked ids, not moto's state.
    pub fn reset(&self) {
        self.call("POST", "reset", Some(json!({})));
    }

    /// Every EC2 call received since the last reset, by Action, faulted or not.
    pub fn counts(&self) -> HashMap<String, u64> {
        serde_json::from_value(self.call("GET", "counts", None)).expect("counts are numbers")
    }

    /// The calls answered RequestLimitExceeded since the last reset (by `throttle`, a bucket or
    /// a refusal with that code), by Action.
    pub fn throttled(&self) -> HashMap<String, u64> {
        serde_json::from_value(self.call("GET", "throttled", None))
            .expect("throttled counts are numbers")
    }

    /// Every action's calls answered RequestLimitExceeded since the last reset, summed.
    pub fn throttled_total(&self) -> u64 {
        self.throttled().values().sum()
    }

    /// Throttles every action with its own token bucket of these sizes, as EC2 does.
    pub fn buckets_for_all(&self, burst: u64, refill_per_sec: u64) -> Value {
        self.configure(
            json!({"buckets": {"*": {"burst": burst, "refill_per_sec": refill_per_sec}}}),
        )
    }

    /// The calls of one action since the last reset.
    pub fn count(&self, action: &str) -> u64 {
        self.counts().get(action).copied().unwrap_or(0)
    }

    /// Makes these instances' launch time `secs` older; returns how many moto had.
    pub fn age(&self, ids: &[&str], secs: u64) -> u64 {
        let v = self.call(
            "POST",
            "age",
            Some(json!({"instance_ids": ids, "seconds": secs})),
        );
        v["aged"].as_u64().expect("age answers {\"aged\": n}")
    }

    /// From now on, every call of `action` blocks until `release`.
    pub fn hold(&self, action: &str) {
        self.call("POST", "hold", Some(json!({ "action": action })));
    }

    /// Lets the held calls of `action` go on to moto, and holds no more.
    pub fn release(&self, action: &str) {
        self.call("POST", "release", Some(json!({ "action": action })));
    }

    /// How many calls of `action` are blocked now.
    pub fn held(&self, action: &str) -> u64 {
        self.call("GET", "held", None)[action].as_u64().unwrap_or(0)
    }

    /// Waits until at least `n` calls of `action` are blocked (the client is then at a known point of its
    /// work); panics after `timeout`.
    pub fn wait_held(&self, action: &str, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let held = self.held(action);
            if held >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{held} calls of {action} held after {timeout:?}, waited for {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
