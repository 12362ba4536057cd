//! Prometheus metrics over plain HTTP (`GET /metrics`) on a local address.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::sync::Arc;

use anyhow::Context as _;

use crate::agent::{Agent, Operation, Status};
use crate::engine::Verdict;

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text for a status.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, lines: Vec<String>| {
        o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for l in lines {
            o.push_str(&format!("{name}{l}\n"));
        }
    };
    metric(
        "drover_booted_info",
        "The booted slot and OS version.",
        "gauge",
        vec![format!(
            "{{slot=\"{}\",version=\"{}\",measured=\"{}\"}} 1",
            s.booted.slot.label(),
            label(&s.booted.version),
            s.booted.measured
        )],
    );
    if let Some(m) = &s.measured_boot {
        metric(
            "drover_measured_boot_verified",
            "1 when this boot's TPM measurements verified (droverctl verify-boot), 0 when not or not measured.",
            "gauge",
            vec![format!(" {}", u8::from(m.verified))],
        );
    }
    metric(
        "drover_booted_successful",
        "1 when the booted slot is marked successful.",
        "gauge",
        vec![format!(" {}", u8::from(s.booted_successful))],
    );
    metric(
        "drover_last_check_timestamp_seconds",
        "When the channel was last checked successfully (0: never).",
        "gauge",
        vec![format!(" {}", s.last_check.unwrap_or(0))],
    );
    metric(
        "drover_update_operation",
        "What the agent is doing (1 for the current operation).",
        "gauge",
        Operation::ALL
            .iter()
            .map(|op| {
                format!(
                    "{{operation=\"{}\"}} {}",
                    op.name(),
                    u8::from(*op == s.operation)
                )
            })
            .collect(),
    );
    let (done, total) = s.progress.unwrap_or((0, 0));
    metric(
        "drover_update_written_bytes",
        "Bytes of the release being written.",
        "gauge",
        vec![format!(" {done}")],
    );
    metric(
        "drover_update_size_bytes",
        "Size of the release being written.",
        "gauge",
        vec![format!(" {total}")],
    );
    metric(
        "drover_update_failures_total",
        "Checks and updates that failed since the agent started.",
        "counter",
        vec![format!(" {}", s.failures)],
    );
    metric(
        "drover_failed_versions",
        "Versions that failed to boot on this node.",
        "gauge",
        vec![format!(" {}", s.failed_versions.len())],
    );
    metric(
        "drover_last_rollback_timestamp_seconds",
        "When the last rollback happened (0: never).",
        "gauge",
        vec![format!(
            " {}",
            s.last_rollback.as_ref().map(|r| r.at).unwrap_or(0)
        )],
    );
    metric(
        "drover_reboot_lock_held",
        "1 while this node holds the fleet's reboot lock (etcd-lock, fleetlock).",
        "gauge",
        vec![format!(" {}", u8::from(s.reboot_lock.is_some()))],
    );
    let now = drover_core::channel::now();
    metric(
        "drover_reboot_waiting_seconds",
        "How long a written update has waited for its reboot (window, inhibitors, the reboot lock); 0 when none waits.",
        "gauge",
        vec![format!(
            " {}",
            s.reboot_pending_since
                .map(|t| now.saturating_sub(t))
                .unwrap_or(0)
        )],
    );
    let (wave_at, halted) = match &s.last_verdict {
        Some(Verdict::Waiting { at, .. }) => (*at, None),
        Some(Verdict::Halted { version, .. }) => (0, Some(version)),
        _ => (0, None),
    };
    metric(
        "drover_rollout_wave_timestamp_seconds",
        "When the rollout of the newest release reaches this node, while it waits for its wave (0 otherwise).",
        "gauge",
        vec![format!(" {wave_at}")],
    );
    metric(
        "drover_release_halted",
        "1 for a newer release the fleet halted (halt-after-failures), as the last check found.",
        "gauge",
        halted
            .map(|v| vec![format!("{{version=\"{}\"}} 1", label(v))])
            .unwrap_or_default(),
    );
    o
}

/// Serves metrics on `addr` from a thread of its own.
pub fn serve(addr: &str, agent: Arc<Agent>) -> anyhow::Result<std::net::SocketAddr> {
    let l = TcpListener::bind(addr).with_context(|| format!("listening on {addr} for metrics"))?;
    let local = l.local_addr()?;
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(&c);
            if r.read_line(&mut line).is_err() {
                continue;
            }
            // Skip the headers.
            let mut h = String::new();
            while r.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
                h.clear();
            }
            let (code, body) = if line.starts_with("GET /metrics ") {
                let _ = agent.refresh();
                ("200 OK", render(&agent.status()))
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let _ = write!(
                c,
                "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{MeasuredBoot, OtherSlot};

    fn status(measured_boot: Option<MeasuredBoot>) -> Status {
        Status {
            booted: crate::node::Booted {
                slot: drover_core::SlotId::A,
                version: "1.0.0".into(),
                measured: true,
                decision: "candidate".into(),
            },
            booted_successful: true,
            other: OtherSlot::default(),
            operation: Operation::Idle,
            progress: None,
            channel: "stable".into(),
            server: None,
            reboot_strategy: crate::config::Strategy::Immediate,
            last_check: None,
            last_verdict: None,
            last_error: None,
            failures: 0,
            failed_versions: Vec::new(),
            last_rollback: None,
            reboot_blocked: None,
            reboot_pending_since: None,
            reboot_lock: None,
            measured_boot,
        }
    }

    #[test]
    fn the_measured_boot_verdict_is_a_gauge_once_the_check_has_run() {
        assert!(!render(&status(None)).contains("drover_measured_boot_verified"));
        let m = render(&status(Some(MeasuredBoot {
            measured: true,
            verified: false,
            problem: Some("stage-initramfs (PCR 9): …".into()),
        })));
        assert!(m.contains("\ndrover_measured_boot_verified 0\n"), "{m}");
        let m = render(&status(Some(MeasuredBoot {
            measured: true,
            verified: true,
            problem: None,
        })));
        assert!(m.contains("\ndrover_measured_boot_verified 1\n"), "{m}");
    }
}
