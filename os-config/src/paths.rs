//! Where the node config puts what it renders on the node: the files
//! other parts read (the agent's drop-in, the kubelet's config and
//! environment, the kubelet binary's place).

/// The agent drop-in the `[update]` section becomes.
pub const AGENT_DROP_IN: &str = "/etc/drover/agent.toml.d/50-node-config.toml";
/// The kubelet's rendered config.
pub const KUBELET_CONFIG: &str = "/etc/kubernetes/kubelet-config.yaml";
/// The kubelet unit's environment (pinned digest, extra arguments).
pub const KUBELET_ENV: &str = "/etc/drover/kubelet.env";
/// Where the kubelet binary goes.
pub const KUBELET_BINARY: &str = "/opt/bin/kubelet";
/// logind's drop-in for the kubelet's graceful shutdown.
pub const LOGIND_DROP_IN: &str = "/etc/systemd/logind.conf.d/90-drover-kubelet.conf";
/// containerd's registry host configurations (`HOST/hosts.toml`), the
/// `config_path` of the image's containerd config.
pub const CONTAINERD_CERTS_D: &str = "/etc/containerd/certs.d";
/// containerd configuration drop-ins, imported by the image's config.
pub const CONTAINERD_CONF_D: &str = "/etc/containerd/conf.d";
