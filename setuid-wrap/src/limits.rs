//! The resource limits the runner needs, and what to do with the ones the caller left.
//!
//! Limits survive both the setuid exec and the runner's exec, and a process that is not root
//! cannot raise a hard limit that the caller lowered. A caller could otherwise start a launch
//! with `ulimit -f 1` or `ulimit -t 1` and have the runner killed halfway, between reserving the
//! quota and recording the instances. So the wrapper raises each soft limit it can, and refuses
//! up front, naming the limit, when a hard limit is below what the runner needs. `RLIMIT_CORE`
//! is set to 0, soft and hard: the runner's memory holds credentials.
//! The table and [`decide`] are pure; `sys` reads and writes the limits.
#![forbid(unsafe_code)]

/// `RLIM_INFINITY`, as the kernel reports it on Linux.
pub const INFINITY: u64 = u64::MAX;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The limits the wrapper looks at (`setrlimit(2)` names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Fsize,
    Nofile,
    As,
    Data,
    Stack,
    Cpu,
    Nproc,
    Core,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Fsize => "RLIMIT_FSIZE",
            Resource::Nofile => "RLIMIT_NOFILE",
            Resource::As => "RLIMIT_AS",
            Resource::Data => "RLIMIT_DATA",
            Resource::Stack => "RLIMIT_STACK",
            Resource::Cpu => "RLIMIT_CPU",
            Resource::Nproc => "RLIMIT_NPROC",
            Resource::Core => "RLIMIT_CORE",
        }
    }
}

/// What a limit counts, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Seconds,
    Files,
    Processes,
}

/// Where the soft limit goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Soft {
    /// Up to the hard limit.
    Hard,
    /// Up to `min(hard, n)`; a soft limit already above `n` is left alone.
    AtLeast(u64),
}

/// One row of [`RULES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub resource: Resource,
    /// The smallest hard limit the runner can work with.
    pub minimum: u64,
    pub unit: Unit,
    pub soft: Soft,
}

/// The smallest hard `RLIMIT_STACK` the wrapper accepts. The limit sizes the runner's main
/// thread only: the runner serves its request on a thread whose stack it sizes itself (16 MiB,
/// `WORK_STACK` in stratus's `runner.rs`), and its main thread only starts that thread and
/// waits for it. Measured with the debug build the tests use, by launches through the wrapper
/// (`privileged.rs`, the minimum lowered to 16 KiB for the purpose) under `ulimit -s N`: every
/// launch completed at 36 KiB and above (4 of 4 at 40 and 48, one each at 36 to 1024), and at
/// 32 to 35 KiB most died of a stack overflow before reading the request (the stack's random
/// offset decides). Before the work moved off the main thread a launch needed 1280 to
/// 1408 KiB there, so the old minimum of 1 MiB let it overflow after RunInstances. 256 KiB is
/// seven times the measured need.
pub const STACK_MINIMUM: u64 = 256 * 1024;

/// The runner's needs. `RLIMIT_AS` is large because the async runtime and the TLS stack reserve
/// much more virtual memory than they use; `RLIMIT_NOFILE` stops at 65536 because more buys
/// nothing and some libraries size tables by it; `RLIMIT_STACK` stays at 8 MiB unless the caller
/// set it higher (an unlimited stack changes the memory layout), and its minimum is
/// [`STACK_MINIMUM`]. `RLIMIT_DATA` and `RLIMIT_STACK` go beyond the five limits the design
/// names, for the same reason.
pub const RULES: &[Rule] = &[
    Rule {
        resource: Resource::Fsize,
        minimum: GIB,
        unit: Unit::Bytes,
        soft: Soft::Hard,
    },
    Rule {
        resource: Resource::Nofile,
        minimum: 256,
        unit: Unit::Files,
        soft: Soft::AtLeast(65536),
    },
    Rule {
        resource: Resource::As,
        minimum: 8 * GIB,
        unit: Unit::Bytes,
        soft: Soft::Hard,
    },
    Rule {
        resource: Resource::Data,
        minimum: GIB,
        unit: Unit::Bytes,
        soft: Soft::Hard,
    },
    Rule {
        resource: Resource::Stack,
        minimum: STACK_MINIMUM,
        unit: Unit::Bytes,
        soft: Soft::AtLeast(8 * MIB),
    },
    Rule {
        resource: Resource::Cpu,
        minimum: 600,
        unit: Unit::Seconds,
        soft: Soft::Hard,
    },
    Rule {
        resource: Resource::Nproc,
        minimum: 64,
        unit: Unit::Processes,
        soft: Soft::Hard,
    },
];

/// Decides one limit from the caller's `(soft, hard)` values (`INFINITY` for unlimited):
/// `Err` with the refusal message when the hard limit is too low, `Ok(Some(soft))` with the new
/// soft limit to set (the hard limit is kept), `Ok(None)` when nothing changes.
pub fn decide(rule: &Rule, soft: u64, hard: u64) -> Result<Option<u64>, String> {
    if hard < rule.minimum {
        return Err(format!(
            "the caller's hard limit {} is {}; the runner needs at least {} \
             (raise it, or do not lower it with ulimit)",
            rule.resource.name(),
            show(hard, rule.unit),
            show(rule.minimum, rule.unit)
        ));
    }
    let target = match rule.soft {
        Soft::Hard => hard,
        Soft::AtLeast(n) => soft.max(n.min(hard)),
    };
    Ok((target != soft).then_some(target))
}

/// A limit value for people: `1 GiB`, `8 MiB`, `256 KiB`, `512 bytes`, `600 s`, `8 files`,
/// `unlimited`.
pub fn show(value: u64, unit: Unit) -> String {
    if value == INFINITY {
        return "unlimited".to_string();
    }
    match unit {
        Unit::Bytes => {
            for (size, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
                if value >= size && value.is_multiple_of(size) {
                    return format!("{} {name}", value / size);
                }
            }
            format!("{value} bytes")
        }
        Unit::Seconds => format!("{value} s"),
        Unit::Files => format!("{value} open files"),
        Unit::Processes => format!("{value} processes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(resource: Resource) -> &'static Rule {
        RULES.iter().find(|r| r.resource == resource).unwrap()
    }

    const INF: u64 = INFINITY;

    /// (resource, soft, hard, expected)
    #[allow(clippy::type_complexity)]
    const TABLE: &[(Resource, u64, u64, Result<Option<u64>, &str>)] = &[
        // Unlimited stays unlimited; nothing to do.
        (Resource::Fsize, INF, INF, Ok(None)),
        (Resource::As, INF, INF, Ok(None)),
        (Resource::Cpu, INF, INF, Ok(None)),
        // A lowered soft limit is raised to the hard one.
        (Resource::Fsize, 512, INF, Ok(Some(INF))),
        (Resource::Cpu, 1, 3600, Ok(Some(3600))),
        (Resource::Nproc, 10, 4096, Ok(Some(4096))),
        (Resource::As, GIB, 16 * GIB, Ok(Some(16 * GIB))),
        // Hard limits below the minimum are refused, at the boundary too.
        (
            Resource::Fsize,
            1024,
            1024,
            Err(
                "the caller's hard limit RLIMIT_FSIZE is 1 KiB; the runner needs at least 1 GiB \
                 (raise it, or do not lower it with ulimit)",
            ),
        ),
        (Resource::Fsize, 0, GIB - 1, Err("is 1073741823 bytes;")),
        (Resource::Fsize, GIB, GIB, Ok(None)),
        (
            Resource::Nofile,
            8,
            8,
            Err("RLIMIT_NOFILE is 8 open files; the runner needs at least 256 open files"),
        ),
        (
            Resource::Cpu,
            1,
            1,
            Err("RLIMIT_CPU is 1 s; the runner needs at least 600 s"),
        ),
        (
            Resource::As,
            4 * GIB,
            4 * GIB,
            Err("RLIMIT_AS is 4 GiB; the runner needs at least 8 GiB"),
        ),
        (Resource::Nproc, 63, 63, Err("RLIMIT_NPROC is 63 processes")),
        (
            Resource::Data,
            100 * MIB,
            100 * MIB,
            Err("RLIMIT_DATA is 100 MiB"),
        ),
        (Resource::Stack, 65536, 65536, Err("RLIMIT_STACK is 64 KiB")),
        // NOFILE goes to min(hard, 65536), never down.
        (Resource::Nofile, 1024, 524288, Ok(Some(65536))),
        (Resource::Nofile, 1024, 4096, Ok(Some(4096))),
        (Resource::Nofile, 100000, 524288, Ok(None)),
        (Resource::Nofile, 65536, INF, Ok(None)),
        (Resource::Nofile, 256, 256, Ok(None)),
        // STACK goes to 8 MiB if the hard limit allows, and unlimited is left alone.
        (Resource::Stack, MIB, INF, Ok(Some(8 * MIB))),
        (Resource::Stack, MIB, 2 * MIB, Ok(Some(2 * MIB))),
        (Resource::Stack, 8 * MIB, INF, Ok(None)),
        (Resource::Stack, INF, INF, Ok(None)),
        // The minimum is the measured need with room to spare, not 1 MiB.
        (Resource::Stack, 256 * 1024, 256 * 1024, Ok(None)),
        (Resource::Stack, 64 * 1024, 256 * 1024, Ok(Some(256 * 1024))),
        (
            Resource::Stack,
            256 * 1024 - 1024,
            256 * 1024 - 1024,
            Err("RLIMIT_STACK is 255 KiB; the runner needs at least 256 KiB"),
        ),
    ];

    #[test]
    fn the_decision_table() {
        for (resource, soft, hard, want) in TABLE {
            let got = decide(rule(*resource), *soft, *hard);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{resource:?} {soft} {hard}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{resource:?}: {g:?} lacks {w:?}"),
                _ => panic!("{resource:?} {soft} {hard}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn every_rule_accepts_its_own_minimum_and_unlimited() {
        for r in RULES {
            assert!(decide(r, r.minimum, r.minimum).is_ok(), "{:?}", r.resource);
            assert!(decide(r, 0, INF).is_ok(), "{:?}", r.resource);
            assert!(decide(r, 0, r.minimum - 1).is_err(), "{:?}", r.resource);
        }
    }

    #[test]
    fn core_is_not_in_the_table() {
        // RLIMIT_CORE is set to 0 unconditionally, not raised.
        assert!(RULES.iter().all(|r| r.resource != Resource::Core));
    }

    #[test]
    fn values_print_for_people() {
        assert_eq!(show(INF, Unit::Bytes), "unlimited");
        assert_eq!(show(GIB, Unit::Bytes), "1 GiB");
        assert_eq!(show(8 * GIB, Unit::Bytes), "8 GiB");
        assert_eq!(show(1536 * MIB, Unit::Bytes), "1536 MiB");
        assert_eq!(show(512, Unit::Bytes), "512 bytes");
        assert_eq!(show(256 * KIB, Unit::Bytes), "256 KiB");
        assert_eq!(show(1536, Unit::Bytes), "1536 bytes");
        assert_eq!(show(0, Unit::Bytes), "0 bytes");
        assert_eq!(show(600, Unit::Seconds), "600 s");
    }
}
