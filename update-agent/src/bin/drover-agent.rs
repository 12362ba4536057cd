//! `drover-agent`: follows a signed update channel and keeps this node on
//! its newest release (see the crate documentation).

use std::hash::{BuildHasher as _, Hasher as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use drover_update_agent::agent::Agent;
use drover_update_agent::assess;
use drover_update_agent::config::{self, Config};
use drover_update_agent::reboot::Logind;
use drover_update_agent::{dbus, metrics, node, schedule};

/// Drover's update agent: checks the signed channel, writes new releases to
/// the inactive /usr slot, reboots by the configured strategy, confirms the
/// new slot once boot-complete.target is reached, and detects rollbacks.
///
/// Configuration: /usr/lib/drover/agent.toml, then
/// /etc/drover/agent.toml.d/*.toml in name order. Logs go to standard error
/// (the journal, under systemd; `DROVER_LOG=debug` for more). Runs as a
/// systemd service of Type=notify.
#[derive(Debug, Parser)]
#[command(name = "drover-agent", version)]
struct Cli {
    /// The image's defaults.
    #[arg(long, default_value = config::DEFAULTS, value_name = "FILE")]
    config: PathBuf,
    /// The node's drop-in directory.
    #[arg(long, default_value = config::DROP_INS, value_name = "DIR")]
    config_dir: PathBuf,
    /// Print the merged configuration and exit.
    #[arg(long)]
    print_config: bool,
    /// The machine-id (the rollout wave and the reboot lock's node id are
    /// derived from it; the id itself is never sent).
    #[arg(long, default_value = "/etc/machine-id", value_name = "FILE")]
    machine_id_file: PathBuf,
}

fn sd_notify(msg: &str) {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|a| {
        let s = UnixDatagram::unbound()?;
        s.send_to_addr(msg.as_bytes(), &a)
    });
    if let Err(e) = sent {
        tracing::warn!("sd_notify: {e}");
    }
}

/// A random number from the OS (for the poll jitter).
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load_from(&cli.config, &cli.config_dir)?;
    if cli.print_config {
        println!("{cfg:#?}");
        return Ok(());
    }
    let disk = match &cfg.disk {
        Some(d) => d.clone(),
        None => node::find_disk()?,
    };
    let booted = node::booted(&cfg.boot_record)?;
    tracing::info!(
        slot = booted.slot.label(),
        version = %booted.version,
        measured = booted.measured,
        disk = %disk.display(),
        "drover-agent {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let conn = dbus::connect(&cfg.bus)?;
    let sig_conn = conn.clone();
    let agent = Agent::new(
        cfg.clone(),
        disk,
        booted,
        node::machine_id_from(&cli.machine_id_file),
        Box::new(move |ev| dbus::emit(&sig_conn, &ev)),
        Box::new(Logind::new(conn.clone())),
    )?;
    let started = Instant::now();
    if let Err(e) = agent.after_boot() {
        tracing::error!("after-boot bookkeeping failed: {e:#}");
    }
    dbus::serve(&conn, Arc::clone(&agent))?;
    if let Some(addr) = &cfg.metrics_listen {
        let a = metrics::serve(addr, Arc::clone(&agent))?;
        tracing::info!("metrics on http://{a}/metrics");
    }
    sd_notify("READY=1\nSTATUS=idle");

    // Fleet bookkeeping (failed boots to count, the reboot lock to give
    // back): every 10 s, backing off to 5 min while the store is down.
    let mut next_settle = Instant::now();
    let mut settle_pause = Duration::from_secs(10);
    let mut next_poll = Instant::now()
        + Duration::from_secs(schedule::first_poll_delay(cfg.poll_jitter_secs, random()));
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let failed_checks = || {
            assess::failed_boot_checks(&conn).unwrap_or_else(|e| {
                // No systemd on this bus (a test bus, a container): only
                // the timeout decides.
                tracing::debug!("boot assessment: {e}");
                Vec::new()
            })
        };
        if let Err(e) = agent.confirm_tick(started.elapsed(), failed_checks) {
            tracing::error!("{e:#}");
        }
        if let Err(e) = agent.maybe_reboot() {
            tracing::error!("reboot: {e:#}");
        }
        if Instant::now() >= next_settle {
            match agent.settle_fleet() {
                Ok(()) => settle_pause = Duration::from_secs(10),
                Err(e) => {
                    settle_pause = (settle_pause * 2).min(Duration::from_secs(300));
                    tracing::warn!("{e:#}; trying again in {} s", settle_pause.as_secs());
                }
            }
            next_settle = Instant::now() + settle_pause;
        }
        if Instant::now() < next_poll {
            continue;
        }
        next_poll = Instant::now()
            + Duration::from_secs(schedule::next_poll_delay(
                cfg.poll_interval_secs,
                cfg.poll_jitter_secs,
                random(),
            ));
        if cfg.server.is_none() {
            continue;
        }
        let r = if cfg.auto_update {
            agent.update(false, None).map(|_| ())
        } else {
            agent.check(false, None).map(|_| ())
        };
        if let Err(e) = r {
            // Logged by the agent; the next poll tries again.
            tracing::debug!("poll: {e:#}");
        }
        let s = agent.status();
        sd_notify(&format!(
            "STATUS={:?}; booted {} {}; last check {}",
            s.operation,
            s.booted.slot,
            s.booted.version,
            s.last_check
                .map(|t| t.to_string())
                .unwrap_or("never".into())
        ));
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DROVER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // The journal adds the time; colour codes only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
