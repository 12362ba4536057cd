//! Files rendered from settings: the agent drop-in, the kubelet's config
//! and its unit environment.

use drover_core::agent_config::{Reboot, Written};

use crate::fragment::{Registry, Update};
use crate::settings::KubeletSettings;

/// The `[reboot]` table the `[update]` section means (strategy
/// `immediate` when it names none).
pub fn agent_reboot(u: &Update) -> Reboot {
    Reboot {
        strategy: u.reboot_strategy.unwrap_or_default(),
        window: u.window.clone(),
        etcd: u.etcd.clone(),
        fleetlock: u.fleetlock.clone(),
    }
}

/// `/etc/drover/agent.toml.d/50-node-config.toml`: the agent's own keys,
/// rendered from the agent's own types.
pub fn agent_drop_in(u: &Update) -> String {
    let any_reboot = u.reboot_strategy.is_some()
        || u.window.is_some()
        || u.etcd.is_some()
        || u.fleetlock.is_some();
    Written {
        server: u.server.as_ref().map(|s| s.as_str().to_string()),
        channel: u.channel.as_ref().map(|c| c.as_str().to_string()),
        poll_interval_secs: u.poll_interval_secs,
        require_measured_boot: u.require_measured_boot,
        halt_after_failures: u.halt_after_failures,
        reboot: any_reboot.then(|| agent_reboot(u)),
        ..Written::default()
    }
    .render("Written by Drover from the node config ([update]).")
}

/// `/etc/kubernetes/kubelet-config.yaml` (a `KubeletConfiguration`).
/// Values are JSON-quoted, which YAML reads as the same strings.
pub fn kubelet_config(k: &KubeletSettings) -> String {
    let j = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut t = String::from(
        "# Written by Drover from the node config ([kubelet]).\n\
         apiVersion: kubelet.config.k8s.io/v1beta1\n\
         kind: KubeletConfiguration\n\
         containerRuntimeEndpoint: \"unix:///run/containerd/containerd.sock\"\n\
         cgroupDriver: systemd\n\
         staticPodPath: /etc/kubernetes/manifests\n\
         authentication:\n  anonymous:\n    enabled: false\n  webhook:\n    enabled: true\n\
         authorization:\n  mode: Webhook\n",
    );
    if let Some(d) = &k.more.cluster_domain {
        t.push_str(&format!("clusterDomain: {}\n", j(d.as_str())));
    }
    if let Some(dns) = &k.more.cluster_dns {
        t.push_str("clusterDNS:\n");
        for ip in dns {
            t.push_str(&format!("  - {}\n", j(&ip.to_string())));
        }
    }
    if let Some(m) = k.more.max_pods {
        t.push_str(&format!("maxPods: {m}\n"));
    }
    let grace = k.shutdown_grace_period_secs();
    t.push_str(&format!(
        "shutdownGracePeriod: \"{grace}s\"\nshutdownGracePeriodCriticalPods: \"{}s\"\n",
        grace / 3
    ));
    t
}

/// `/etc/systemd/logind.conf.d/90-drover-kubelet.conf`: logind waits for
/// the kubelet's delay inhibitor longer than its grace period (its default
/// 5 s would cut the pods' shutdown short, kubernetes/kubernetes#102818).
pub fn logind_drop_in(k: &KubeletSettings) -> String {
    format!(
        "# Written by Drover from the node config ([kubelet]): the kubelet's\n\
         # graceful shutdown takes up to {} s.\n[Login]\nInhibitDelayMaxSec={}\n",
        k.shutdown_grace_period_secs(),
        k.inhibit_delay_max_secs()
    )
}

/// `/etc/drover/kubelet.env`: what `kubelet.service` reads.
pub fn kubelet_env(k: &KubeletSettings) -> String {
    let mut args = Vec::new();
    if let Some(kc) = &k.more.kubeconfig {
        args.push(format!("--kubeconfig={kc}"));
    }
    if let Some(labels) = &k.more.node_labels {
        let l: Vec<String> = labels.iter().map(|(a, b)| format!("{a}={b}")).collect();
        if !l.is_empty() {
            args.push(format!("--node-labels={}", l.join(",")));
        }
    }
    format!(
        "# Written by Drover from the node config ([kubelet]).\n\
         KUBELET_SHA256={}\nKUBELET_ARGS=\"{}\"\n",
        k.binary_sha256.as_deref().unwrap_or(""),
        args.join(" ").replace(['"', '\\'], "")
    )
}

/// A TOML string literal.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `/etc/containerd/certs.d/HOST/hosts.toml` for a registry (containerd's
/// registry host configuration): the server, the mirrors tried first, and
/// their TLS settings. `ca` is where the registry's CA file goes, when it
/// has one.
pub fn containerd_hosts_toml(r: &Registry, ca: Option<&str>) -> String {
    let server = match &r.server {
        Some(u) => u.as_str().trim_end_matches('/').to_string(),
        None if r.host.as_str() == "docker.io" => "https://registry-1.docker.io".into(),
        None => format!("https://{}", r.host),
    };
    let mut tls = String::new();
    if let Some(ca) = ca {
        tls.push_str(&format!("ca = {}\n", toml_str(ca)));
    }
    if r.insecure {
        tls.push_str("skip_verify = true\n");
    }
    let mut text = format!(
        "# Written by Drover from the node config ([[containerd.registries]] {}).\nserver = {}\n{tls}",
        r.host,
        toml_str(&server)
    );
    // The mirrors first, in order, then the server itself as a host of
    // its own: containerd 1.6 refuses a hosts.toml without a `host` table
    // ("invalid `host` tree").
    let hosts = r
        .mirrors
        .iter()
        .map(|m| {
            (
                m.as_str().trim_end_matches('/').to_string(),
                "[\"pull\", \"resolve\"]",
            )
        })
        .chain(std::iter::once((
            server.clone(),
            "[\"pull\", \"resolve\", \"push\"]",
        )));
    for (url, capabilities) in hosts {
        text.push_str(&format!(
            "\n[host.{}]\n  capabilities = {capabilities}\n",
            toml_str(&url)
        ));
        for l in tls.lines() {
            text.push_str(&format!("  {l}\n"));
        }
    }
    text
}
