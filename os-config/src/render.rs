//! Files rendered from settings: the agent drop-in, the kubelet's config
//! and its unit environment.

use crate::fragment::{RebootStrategy, Update};
use crate::settings::KubeletSettings;

/// TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `/etc/drover/agent.toml.d/50-node-config.toml`: the agent's own keys.
pub fn agent_drop_in(u: &Update) -> String {
    let mut t = String::from("# Written by Drover from the node config ([update]).\n");
    if let Some(s) = &u.server {
        t.push_str(&format!("server = {}\n", q(s.as_str())));
    }
    if let Some(c) = &u.channel {
        t.push_str(&format!("channel = {}\n", q(c.as_str())));
    }
    if let Some(p) = u.poll_interval_secs {
        t.push_str(&format!("poll-interval-secs = {p}\n"));
    }
    if let Some(r) = u.require_measured_boot {
        t.push_str(&format!("require-measured-boot = {r}\n"));
    }
    if let Some(s) = u.reboot_strategy {
        let name = match s {
            RebootStrategy::Immediate => "immediate",
            RebootStrategy::Off => "off",
            RebootStrategy::Window => "window",
        };
        t.push_str(&format!("\n[reboot]\nstrategy = \"{name}\"\n"));
        if let Some(w) = &u.window {
            let days: Vec<String> = w
                .days
                .iter()
                .map(|d| q(&format!("{d:?}").to_lowercase()))
                .collect();
            t.push_str(&format!(
                "\n[reboot.window]\ndays = [{}]\nstart = {}\nlength-minutes = {}\n",
                days.join(", "),
                q(&String::from(w.start.clone())),
                u32::from(w.length_minutes)
            ));
        }
    }
    t
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
    t
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
