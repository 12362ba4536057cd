//! The image spec: a TOML file that says what goes into an image.
//!
//! Unknown keys are rejected with the key's path (`debian.pakages`), so a
//! typo never silently builds the wrong image. Relative paths in the spec
//! (extra files' sources, trusted keys) are relative to the spec file.

use std::path::{Path, PathBuf};

use drover_core::agent_config::{Reboot, Strategy, Written};
use drover_core::keys::PublicKey;
use serde::Deserialize;

/// Debian packages the agent's binaries link (tpm2-tss), required in
/// every image that has the agent.
pub const AGENT_TPM_PACKAGES: [&str; 2] = ["libtss2-esys-3.0.2-0", "libtss2-tctildr0"];

/// A whole image spec.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageSpec {
    /// The release.
    pub os: OsSection,
    /// Where the packages come from.
    pub debian: DebianSection,
    /// Kernel command line and modules of the slot.
    #[serde(default)]
    pub kernel: KernelSection,
    /// Public keys (PEM files) the image trusts for updates; installed to
    /// `/usr/lib/drover/keys/` and built into the boot stage.
    #[serde(default)]
    pub trust: TrustSection,
    /// Extra files placed into the image.
    #[serde(default)]
    pub files: Vec<ExtraFile>,
    /// Partition sizes of the disk image.
    #[serde(default)]
    pub disk: DiskSection,
    /// The update agent and its defaults.
    #[serde(default)]
    pub agent: AgentSection,
}

/// `[agent]`: drover-agent, droverctl and their units go into the image
/// unless `enabled = false`; the other keys become
/// `/usr/lib/drover/agent.toml` (a node overrides them with drop-ins in
/// `/etc/drover/agent.toml.d/`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentSection {
    /// Install the agent.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Update repository URL (none: the node's drop-in sets it).
    pub server: Option<String>,
    /// Channel.
    #[serde(default = "default_channel")]
    pub channel: String,
    /// `immediate`, `off`, `window`, `etcd-lock` or `fleetlock`; the
    /// window and the lock server are per node (the node config's
    /// `[update]`).
    #[serde(default)]
    pub reboot_strategy: Strategy,
    /// Seconds between checks.
    pub poll_interval_secs: Option<u64>,
    /// Seconds a new slot may take to reach boot-complete.target.
    pub boot_complete_timeout_secs: Option<u64>,
    /// The channel's trusted TUF root metadata (`drover channel init`
    /// prints where it is; relative to the spec), installed as
    /// `/usr/lib/drover/tuf/CHANNEL.root.json`: the agent then reads the
    /// channel as a TUF repository, and only so.
    pub tuf_root: Option<PathBuf>,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            enabled: true,
            server: None,
            channel: default_channel(),
            reboot_strategy: Strategy::default(),
            poll_interval_secs: None,
            boot_complete_timeout_secs: None,
            tuf_root: None,
        }
    }
}

impl AgentSection {
    /// The image's `/usr/lib/drover/agent.toml`, rendered from the agent's
    /// own types ([`drover_core::agent_config`]).
    pub fn defaults_toml(&self) -> String {
        Written {
            server: self.server.clone(),
            channel: Some(self.channel.clone()),
            poll_interval_secs: self.poll_interval_secs,
            boot_complete_timeout_secs: self.boot_complete_timeout_secs,
            trusted_keys: Some(vec![drover_core::paths::SYSTEM_KEYS.into()]),
            reboot: Some(Reboot {
                strategy: self.reboot_strategy,
                ..Reboot::default()
            }),
            ..Written::default()
        }
        .render("drover-agent defaults of this image. Override on a node in\n/etc/drover/agent.toml.d/*.toml.")
    }
}

fn yes() -> bool {
    true
}

fn default_channel() -> String {
    "stable".into()
}

/// `[os]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OsSection {
    /// OS name, lower case, e.g. `drover`.
    pub name: String,
    /// Release version, e.g. `1.0.0`.
    pub version: String,
    /// Monotonic security version.
    pub security_version: u64,
}

/// `[debian]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DebianSection {
    /// Suite, e.g. `bookworm`.
    pub suite: String,
    /// Mirror URL.
    #[serde(default = "default_mirror")]
    pub mirror: String,
    /// Packages on top of the minimal base (`linux-image-amd64` is required).
    pub packages: Vec<String>,
    /// More apt sources, one-line format (`deb URI SUITE COMPONENT…`):
    /// the suite's updates and security updates.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Exact package versions (`libc6 = "2.36-9+deb12u7"`): apt pins them
    /// at priority 1001, so they win even over a newer version in the
    /// sources. For rebuilding an older release, or holding one back.
    #[serde(default)]
    pub versions: std::collections::BTreeMap<String, String>,
}

fn default_mirror() -> String {
    "http://deb.debian.org/debian".into()
}

/// `[kernel]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KernelSection {
    /// Kernel command line of the slot (Drover adds the verity arguments).
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Modules the initramfs loads, dependencies resolved from modules.dep.
    #[serde(default = "default_modules")]
    pub modules: Vec<String>,
}

impl Default for KernelSection {
    fn default() -> Self {
        Self {
            cmdline: default_cmdline(),
            modules: default_modules(),
        }
    }
}

fn default_cmdline() -> String {
    "console=tty0 console=ttyS0,115200".into()
}

/// Modules the boot stage and the slot's initramfs need on a VM or a
/// typical server: device-mapper verity, EROFS, ext4, virtio, NVMe, SATA.
pub fn default_modules() -> Vec<String> {
    [
        "dm-verity",
        "erofs",
        "ext4",
        "virtio_blk",
        "virtio_pci",
        "virtio_scsi",
        "sd_mod",
        "nvme",
        "ahci",
        "vfat",
        "nls_cp437",
        "nls_iso8859-1",
        // QEMU's fw_cfg in sysfs: where a VM's node config arrives.
        "qemu_fw_cfg",
        // The installation ISO: CD drives, ISO 9660, the slot image file
        // on it through a loop device.
        "sr_mod",
        "isofs",
        "loop",
    ]
    .map(String::from)
    .to_vec()
}

/// `[trust]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrustSection {
    /// PEM public key files.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// Whether the public half of the key the build signs with is trusted
    /// too (default: yes). With `false`, only `keys` are trusted, and the
    /// build is refused unless one of them is the signing key's: the boot
    /// stage checks the slot's manifest against the trusted keys, so an
    /// image that does not trust its own signer cannot boot.
    #[serde(default = "yes")]
    pub signing_key: bool,
}

impl Default for TrustSection {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            signing_key: true,
        }
    }
}

impl ImageSpec {
    /// The keys an image built from this spec and signed by `signer`
    /// trusts, in the order they are installed: `[trust] keys`, then the
    /// signer's public key unless `signing-key = false` (once: a key
    /// listed twice is installed once). Refuses a set that would leave the
    /// image unable to boot from its own disk: one without the signer.
    pub fn trusted_keys(&self, signer: &PublicKey) -> anyhow::Result<Vec<PublicKey>> {
        let mut keys: Vec<PublicKey> = Vec::new();
        for path in &self.trust.keys {
            let key = PublicKey::load(path)?;
            if !keys.iter().any(|k| k.key_id() == key.key_id()) {
                keys.push(key);
            }
        }
        let listed = keys.iter().any(|k| k.key_id() == signer.key_id());
        if self.trust.signing_key && !listed {
            keys.push(*signer);
        } else if !listed {
            anyhow::bail!(
                "the spec does not trust the key the image is signed with ({}): [trust] signing-key = false and none of [trust] keys is it. The boot stage checks the slot's manifest against the trusted keys, so such a disk would stop in RESCUE; list the signing key's public key (`drover keygen` wrote it beside the secret) or drop `signing-key = false`",
                signer.short_id()
            );
        }
        Ok(keys)
    }
}

/// `[[files]]`: one extra file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExtraFile {
    /// Absolute path in the image; must be under `/usr` or `/etc` (which
    /// is shipped as a factory copy under `/usr/share/factory/etc`).
    pub path: String,
    /// Octal mode, e.g. `"0644"`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Literal contents.
    pub contents: Option<String>,
    /// Or a file to copy (relative to the spec).
    pub source: Option<PathBuf>,
    /// Or a symbolic link to this target (e.g. to enable a unit:
    /// `path = "/usr/lib/systemd/system/multi-user.target.wants/x.service"`,
    /// `link = "../x.service"`).
    pub link: Option<String>,
}

fn default_mode() -> String {
    "0644".into()
}

/// `[disk]`: sizes in MiB.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DiskSection {
    /// EFI system partition.
    #[serde(default = "default_esp")]
    pub esp_mib: u64,
    /// Each USR slot; must hold the slot image of future releases too.
    #[serde(default = "default_usr")]
    pub usr_mib: u64,
    /// OEM partition.
    #[serde(default = "default_oem")]
    pub oem_mib: u64,
    /// ROOT as built (it grows on first boot).
    #[serde(default = "default_root")]
    pub root_mib: u64,
}

fn default_esp() -> u64 {
    128
}
fn default_usr() -> u64 {
    1024
}
fn default_oem() -> u64 {
    32
}
fn default_root() -> u64 {
    256
}

impl Default for DiskSection {
    fn default() -> Self {
        Self {
            esp_mib: default_esp(),
            usr_mib: default_usr(),
            oem_mib: default_oem(),
            root_mib: default_root(),
        }
    }
}

/// A spec that failed to load; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SpecError {
    /// The spec file.
    pub path: PathBuf,
    /// What is wrong, with the key's path.
    pub message: String,
}

impl ImageSpec {
    /// Reads, parses and checks a spec file.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            path: path.to_owned(),
            message: format!("cannot read the spec: {e}"),
        })?;
        let mut spec = Self::parse(&text).map_err(|message| SpecError {
            path: path.to_owned(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for k in &mut spec.trust.keys {
            *k = base.join(&*k);
        }
        for f in &mut spec.files {
            if let Some(s) = &mut f.source {
                *s = base.join(&*s);
            }
        }
        if let Some(r) = &mut spec.agent.tuf_root {
            *r = base.join(&*r);
        }
        Ok(spec)
    }

    /// Parses spec text and checks its values. Errors name the key path.
    pub fn parse(text: &str) -> Result<Self, String> {
        let de = toml::Deserializer::new(text);
        let spec: ImageSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().to_string();
            if path == "." || path.is_empty() {
                msg
            } else {
                format!("at `{path}`: {msg}")
            }
        })?;
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), String> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        };
        if !name_ok(&self.os.name) {
            return Err(format!(
                "at `os.name`: '{}' must be lower-case letters, digits, '-', '_' or '.'",
                self.os.name
            ));
        }
        if !name_ok(&self.os.version.to_ascii_lowercase()) {
            return Err(format!(
                "at `os.version`: '{}' is not a version",
                self.os.version
            ));
        }
        if self.agent.enabled && !self.debian.packages.iter().any(|p| p == "dbus") {
            return Err("at `debian.packages`: the update agent ([agent] enabled) needs `dbus` (its API and logind are on the system bus); add it or set agent.enabled = false".into());
        }
        if self.agent.enabled {
            for lib in AGENT_TPM_PACKAGES {
                if !self.debian.packages.iter().any(|p| p == lib) {
                    return Err(format!("at `debian.packages`: the update agent ([agent] enabled) needs `{lib}` (droverctl reads the TPM through the TSS for verify-boot and attest, at every boot); add it or set agent.enabled = false"));
                }
            }
        }
        if !self
            .debian
            .packages
            .iter()
            .any(|p| p.starts_with("linux-image-"))
        {
            return Err("at `debian.packages`: a kernel package (linux-image-amd64) is required: the slot boots its own kernel".into());
        }
        for (i, p) in self.debian.packages.iter().enumerate() {
            if p.is_empty() || p.contains(char::is_whitespace) || p.starts_with('-') {
                return Err(format!(
                    "at `debian.packages[{i}]`: '{p}' is not a package name"
                ));
            }
        }
        for (i, src) in self.debian.sources.iter().enumerate() {
            let words: Vec<&str> = src.split_whitespace().collect();
            if words.len() < 3 || words[0] != "deb" || src.contains(['\n', '\'', '"']) {
                return Err(format!(
                    "at `debian.sources[{i}]`: '{src}' is not a one-line apt source (`deb URI SUITE COMPONENT…`)"
                ));
            }
        }
        let plain = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.:~_".contains(c))
        };
        for (name, version) in &self.debian.versions {
            if !plain(name) || !plain(version) {
                return Err(format!(
                    "at `debian.versions.{name}`: '{name}' = '{version}' is not a package name and version"
                ));
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            if !(f.path.starts_with("/usr/") || f.path.starts_with("/etc/"))
                || f.path.contains("/../")
            {
                return Err(format!(
                    "at `files[{i}].path`: '{}' must be an absolute path under /usr or /etc",
                    f.path
                ));
            }
            if u32::from_str_radix(&f.mode, 8)
                .map(|m| m > 0o7777)
                .unwrap_or(true)
            {
                return Err(format!(
                    "at `files[{i}].mode`: '{}' is not an octal mode",
                    f.mode
                ));
            }
            let given = [f.contents.is_some(), f.source.is_some(), f.link.is_some()];
            if given.iter().filter(|g| **g).count() != 1 {
                return Err(format!(
                    "at `files[{i}]`: give exactly one of `contents`, `source` and `link`"
                ));
            }
        }
        let d = &self.disk;
        if d.esp_mib < 34 || d.usr_mib < 16 || d.oem_mib < 1 || d.root_mib < 16 {
            return Err("at `disk`: sizes too small (esp-mib ≥ 34 for FAT32, usr-mib ≥ 16, oem-mib ≥ 1, root-mib ≥ 16)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[os]
name = "drover"
version = "1.0.0"
security-version = 1

[debian]
suite = "bookworm"
packages = ["systemd", "dbus", "libtss2-esys-3.0.2-0", "libtss2-tctildr0", "linux-image-amd64"]
"#;

    #[test]
    fn the_agent_section_becomes_agent_toml_and_needs_dbus_and_the_tss() {
        let s = ImageSpec::parse(&format!(
            "{GOOD}\n[agent]\nserver = \"https://updates.example/drover\"\nchannel = \"beta\"\nreboot-strategy = \"off\"\n"
        ))
        .unwrap();
        let t = s.agent.defaults_toml();
        assert!(
            t.contains("server = \"https://updates.example/drover\""),
            "{t}"
        );
        assert!(t.contains("channel = \"beta\""), "{t}");
        assert!(t.contains("strategy = \"off\""), "{t}");
        let e =
            ImageSpec::parse(&format!("{GOOD}\n[agent]\nreboot-strategy = \"now\"\n")).unwrap_err();
        assert!(e.contains("agent.reboot-strategy"), "{e}");
        // What it writes, the agent's own types read back.
        let w: Written = toml::from_str(&t).unwrap();
        assert_eq!(w.reboot.unwrap().strategy, Strategy::Off);
        assert_eq!(w.channel.as_deref(), Some("beta"));
        assert!(
            t.starts_with("# drover-agent defaults of this image."),
            "{t}"
        );
        let e = ImageSpec::parse(&GOOD.replace("\"dbus\", ", "")).unwrap_err();
        assert!(e.contains("dbus"), "{e}");
        let e = ImageSpec::parse(&GOOD.replace("\"libtss2-tctildr0\", ", "")).unwrap_err();
        assert!(
            e.contains("`libtss2-tctildr0`") && e.contains("verify-boot"),
            "{e}"
        );
        assert!(ImageSpec::parse(&format!(
            "{}\n[agent]\nenabled = false\n",
            GOOD.replace("\"dbus\", ", "")
        ))
        .is_ok());
    }

    #[test]
    fn a_minimal_spec_gets_defaults() {
        let s = ImageSpec::parse(GOOD).unwrap();
        assert_eq!(s.disk.usr_mib, 1024);
        assert!(s.kernel.modules.contains(&"dm-verity".to_string()));
        assert_eq!(s.debian.mirror, "http://deb.debian.org/debian");
    }

    #[test]
    fn sources_and_pinned_versions_are_checked() {
        let with = |extra: &str| GOOD.replace("packages =", &format!("{extra}\npackages ="));
        let s =
            ImageSpec::parse(&format!(
            "{}\n[debian.versions]\nlibc6 = \"2.36-9+deb12u7\"\n",
            with("sources = [\"deb http://deb.debian.org/debian-security bookworm-security main\"]")
        ))
            .unwrap();
        assert_eq!(s.debian.sources.len(), 1);
        assert_eq!(s.debian.versions["libc6"], "2.36-9+deb12u7");
        let e = ImageSpec::parse(&with("sources = [\"http://x bookworm main\"]")).unwrap_err();
        assert!(e.contains("debian.sources[0]"), "{e}");
        let e =
            ImageSpec::parse(&format!("{GOOD}\n[debian.versions]\nlibc6 = \"1 2\"\n")).unwrap_err();
        assert!(e.contains("debian.versions.libc6"), "{e}");
        // The example spec parses.
        let example = include_str!("../../examples/container-host.toml");
        assert!(!ImageSpec::parse(example).unwrap().debian.sources.is_empty());
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let bad = GOOD.replace("packages =", "pakages =");
        let e = ImageSpec::parse(&bad).unwrap_err();
        assert!(e.contains("debian") && e.contains("pakages"), "{e}");
        let bad = format!("{GOOD}\n[disk]\nusr-mb = 5\n");
        let e = ImageSpec::parse(&bad).unwrap_err();
        assert!(e.contains("at `disk.usr-mb`"), "{e}");
        let bad = format!("{GOOD}\n[[files]]\npath = \"/usr/x\"\ncontents = \"\"\nowner = \"x\"\n");
        let e = ImageSpec::parse(&bad).unwrap_err();
        assert!(e.contains("files[0]") && e.contains("owner"), "{e}");
    }

    #[test]
    fn bad_values_name_their_path() {
        let e = ImageSpec::parse(&GOOD.replace("security-version = 1", "security-version = -1"))
            .unwrap_err();
        assert!(e.contains("os.security-version"), "{e}");
        let e = ImageSpec::parse(&GOOD.replace(", \"linux-image-amd64\"", "")).unwrap_err();
        assert!(e.contains("kernel package"), "{e}");
        let e = ImageSpec::parse(&format!(
            "{GOOD}\n[[files]]\npath = \"/var/x\"\ncontents = \"\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("files[0].path"), "{e}");
        let e = ImageSpec::parse(&format!(
            "{GOOD}\n[[files]]\npath = \"/usr/x\"\nmode = \"999\"\ncontents = \"\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("files[0].mode"), "{e}");
        let e = ImageSpec::parse(&GOOD.replace("drover\"", "Drover OS\"")).unwrap_err();
        assert!(e.contains("os.name"), "{e}");
    }

    #[test]
    fn the_signing_key_is_trusted_unless_the_spec_says_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, _) = drover_core::keys::SigningKey::generate().unwrap();
        let (other, _) = drover_core::keys::SigningKey::generate().unwrap();
        let signer = signer.public_key();
        let other_pem = dir.path().join("other.pub.pem");
        std::fs::write(&other_pem, other.public_key().to_pem()).unwrap();
        let signer_pem = dir.path().join("signer.pub.pem");
        std::fs::write(&signer_pem, signer.to_pem()).unwrap();

        // No [trust] at all (the example spec): the signer alone.
        let s = ImageSpec::parse(GOOD).unwrap();
        let ids = |keys: Vec<PublicKey>| keys.iter().map(|k| k.short_id()).collect::<Vec<_>>();
        assert_eq!(ids(s.trusted_keys(&signer).unwrap()), [signer.short_id()]);

        // Listed keys first, the signer after them, once.
        let mut s = s;
        s.trust.keys = vec![other_pem.clone(), signer_pem.clone(), other_pem.clone()];
        assert_eq!(
            ids(s.trusted_keys(&signer).unwrap()),
            [other.public_key().short_id(), signer.short_id()]
        );

        // signing-key = false: allowed while a listed key is the signer...
        let mut s = ImageSpec::parse(&format!("{GOOD}\n[trust]\nsigning-key = false\n")).unwrap();
        s.trust.keys = vec![signer_pem];
        assert_eq!(ids(s.trusted_keys(&signer).unwrap()), [signer.short_id()]);
        // ...and refused, naming the way out, when none is: that disk
        // would stop in RESCUE at its first boot.
        s.trust.keys = vec![other_pem];
        let e = format!("{:#}", s.trusted_keys(&signer).unwrap_err());
        assert!(
            e.contains(&signer.short_id()) && e.contains("RESCUE") && e.contains("signing-key"),
            "{e}"
        );
    }
}
