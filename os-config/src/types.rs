//! Value types that cannot hold a bad value: each is parsed from its TOML
//! string once, with the reason it was refused, and the rest of the code
//! never checks again.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! string_type {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $check(&s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl $name {
            /// The checked text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn check_hostname(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err(format!("'{s}' is not a hostname: 1 to 64 characters"));
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "'{s}' is not a hostname: labels of a-z, 0-9 and '-', not starting or ending with '-'"
            ));
        }
    }
    Ok(())
}

string_type!(
    /// A host name (RFC 1123 labels, lower case, at most 64 characters).
    Hostname,
    check_hostname
);

fn check_user_name(s: &str) -> Result<(), String> {
    let mut b = s.bytes();
    let first_ok = b
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == b'_');
    if !first_ok
        || s.len() > 32
        || !b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
    {
        return Err(format!(
            "'{s}' is not a user name: a-z or '_' first, then a-z, 0-9, '_' or '-', at most 32"
        ));
    }
    Ok(())
}

string_type!(
    /// A user or group name as `useradd` and `systemd-sysusers` accept it.
    UserName,
    check_user_name
);

const SSH_KEY_TYPES: [&str; 8] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

fn check_ssh_key(s: &str) -> Result<(), String> {
    use base64::Engine as _;
    if s.contains('\n') || s.contains('\r') {
        return Err("an SSH key is one line".into());
    }
    let mut parts = s.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err("an SSH key is 'TYPE BASE64 [COMMENT]' (options are not supported)".into());
    };
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "'{kind}' is not an SSH key type ({})",
            SSH_KEY_TYPES.join(", ")
        ));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| "the key's second field is not base64".to_string())?;
    // The blob starts with the key type again, as an SSH string.
    let inner = raw
        .get(4..)
        .and_then(|r| {
            let n = u32::from_be_bytes(raw[..4].try_into().ok()?) as usize;
            r.get(..n)
        })
        .map(|t| t == kind.as_bytes())
        .unwrap_or(false);
    if !inner {
        return Err(format!("the key's data is not a {kind} key"));
    }
    Ok(())
}

string_type!(
    /// One `authorized_keys` line: type, base64 key, optional comment.
    SshKey,
    check_ssh_key
);

/// Where a node config may not write: read-only or gone after boot.
const FORBIDDEN: [(&str, &str); 6] = [
    ("/usr", "/usr is the verified, read-only image"),
    ("/proc", "/proc is the kernel's"),
    ("/sys", "/sys is the kernel's"),
    ("/dev", "/dev is the kernel's"),
    ("/run", "/run is a tmpfs, empty on every boot"),
    ("/tmp", "/tmp is cleaned on boot"),
];

fn check_path(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!("'{s}' is not an absolute path"));
    }
    if s.len() > 4096 || s.contains('\0') {
        return Err("a path has at most 4096 bytes and no NUL".into());
    }
    if s.split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "'{s}' is not a normal path (no '.', '..', '//' or trailing '/')"
        ));
    }
    for (dir, why) in FORBIDDEN {
        if s == dir || s.starts_with(&format!("{dir}/")) {
            return Err(format!("'{s}' cannot be written: {why}"));
        }
    }
    if s == "/" {
        return Err("'/' is not a file".into());
    }
    Ok(())
}

string_type!(
    /// An absolute, normal path the config may write (not under /usr,
    /// /proc, /sys, /dev, /run or /tmp).
    NodePath,
    check_path
);

fn check_any_path(s: &str) -> Result<(), String> {
    if !s.starts_with('/') || s.contains('\0') {
        return Err(format!("'{s}' is not an absolute path"));
    }
    Ok(())
}

string_type!(
    /// An absolute path to read (a binary, a shell).
    AbsPath,
    check_any_path
);

const UNIT_SUFFIXES: [&str; 9] = [
    "service",
    "socket",
    "timer",
    "target",
    "path",
    "mount",
    "automount",
    "slice",
    "swap",
];

fn check_unit_name(s: &str) -> Result<(), String> {
    let Some((stem, suffix)) = s.rsplit_once('.') else {
        return Err(format!(
            "'{s}' has no unit type suffix (.service, .timer, …)"
        ));
    };
    if !UNIT_SUFFIXES.contains(&suffix) {
        return Err(format!(
            "'.{suffix}' is not a unit type ({})",
            UNIT_SUFFIXES.join(", ")
        ));
    }
    if stem.is_empty()
        || s.len() > 255
        || !stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
    {
        return Err(format!(
            "'{s}' is not a unit name (letters, digits and ':-_.\\@')"
        ));
    }
    Ok(())
}

string_type!(
    /// A systemd unit name with its type suffix.
    UnitName,
    check_unit_name
);

fn check_drop_in(s: &str) -> Result<(), String> {
    if !s.ends_with(".conf") || s.contains('/') || s.len() <= 5 {
        return Err(format!("'{s}' is not a drop-in name (NAME.conf)"));
    }
    Ok(())
}

string_type!(
    /// A drop-in file name, `NAME.conf`.
    DropInName,
    check_drop_in
);

fn check_registry_host(s: &str) -> Result<(), String> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['-', '.']);
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if !host_ok || !port_ok {
        return Err(format!(
            "'{s}' is not a registry host: a host name or IPv4 address, with an optional :PORT (as in an image reference: registry.example:5000)"
        ));
    }
    Ok(())
}

string_type!(
    /// A registry's host as image references name it (`docker.io`,
    /// `10.0.2.100:5000`): containerd's `certs.d` directory name.
    RegistryHost,
    check_registry_host
);

fn check_toml_name(s: &str) -> Result<(), String> {
    let stem = s.strip_suffix(".toml").unwrap_or("");
    if stem.is_empty()
        || !stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        || stem.starts_with('.')
    {
        return Err(format!(
            "'{s}' is not a drop-in name (NAME.toml, NAME of letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

string_type!(
    /// A containerd configuration drop-in's file name, `NAME.toml`.
    TomlDropInName,
    check_toml_name
);

fn check_sysctl_key(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.starts_with(['.', '/'])
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/*".contains(&b))
    {
        return Err(format!(
            "'{s}' is not a sysctl key (like net.ipv4.ip_forward)"
        ));
    }
    Ok(())
}

string_type!(
    /// A sysctl key, dotted (`net.ipv4.ip_forward`).
    SysctlKey,
    check_sysctl_key
);

fn check_sha256(s: &str) -> Result<(), String> {
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(format!("'{s}' is not a SHA-256 (64 lower-case hex digits)"));
    }
    Ok(())
}

string_type!(
    /// A SHA-256 digest, 64 lower-case hex digits.
    Sha256Hex,
    check_sha256
);

fn check_channel(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!("'{s}' is not a channel name (a-z, 0-9, '-')"));
    }
    Ok(())
}

string_type!(
    /// An update channel name.
    Channel,
    check_channel
);

fn check_url(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("'{s}' is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') || s.chars().any(char::is_whitespace) {
        return Err(format!("'{s}' has no host"));
    }
    Ok(())
}

string_type!(
    /// An http:// or https:// URL.
    Url,
    check_url
);

fn check_line(s: &str) -> Result<(), String> {
    if s.contains(['\n', '\r', '\0']) {
        return Err("must be one line".into());
    }
    Ok(())
}

string_type!(
    /// Text on one line (a value that goes into a line-based file).
    Line,
    check_line
);

/// A file mode from its octal string (`"0644"`), at most `07777`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mode(u32);

impl TryFrom<String> for Mode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let m = u32::from_str_radix(&s, 8)
            .ok()
            .filter(|m| *m <= 0o7777 && !s.is_empty() && s.len() <= 5)
            .ok_or_else(|| format!("'{s}' is not an octal file mode like \"0644\""))?;
        Ok(Self(m))
    }
}

impl From<Mode> for String {
    fn from(m: Mode) -> String {
        format!("{:04o}", m.0)
    }
}

impl Mode {
    /// The mode bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// From bits (masked to 07777).
    pub fn from_bits(bits: u32) -> Self {
        Self(bits & 0o7777)
    }
}

/// An owner or group: a name, or a number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Owner {
    /// By name (resolved against the config's users and the image).
    Name(UserName),
    /// By number.
    Id(u32),
}

impl TryFrom<String> for Owner {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if let Ok(n) = s.parse::<u32>() {
            return Ok(Self::Id(n));
        }
        UserName::try_from(s).map(Self::Name)
    }
}

impl From<Owner> for String {
    fn from(o: Owner) -> String {
        o.to_string()
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Name(n) => write!(f, "{n}"),
            Owner::Id(i) => write!(f, "{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T: TryFrom<String, Error = String>>(s: &str) -> bool {
        T::try_from(s.to_string()).is_ok()
    }

    #[test]
    fn hostnames() {
        assert!(ok::<Hostname>("node-1"));
        assert!(ok::<Hostname>("a.example.com"));
        for bad in ["", "-a", "a-", "A", "a_b", "a..b", &"x".repeat(65)] {
            assert!(!ok::<Hostname>(bad), "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert!(ok::<NodePath>("/etc/motd"));
        assert!(ok::<NodePath>("/var/lib/x"));
        for bad in [
            "etc/motd",
            "/etc/../x",
            "/etc//x",
            "/etc/",
            "/usr/bin/x",
            "/usr",
            "/run/x",
            "/",
            "/proc/x",
        ] {
            assert!(!ok::<NodePath>(bad), "{bad}");
        }
        let e = NodePath::try_from("/usr/lib/x".to_string()).unwrap_err();
        assert!(e.contains("read-only"), "{e}");
    }

    #[test]
    fn modes_and_owners() {
        assert_eq!(Mode::try_from("0644".to_string()).unwrap().bits(), 0o644);
        assert_eq!(Mode::try_from("4755".to_string()).unwrap().bits(), 0o4755);
        for bad in ["", "0999", "10000", "rw-r--r--", "-1"] {
            assert!(Mode::try_from(bad.to_string()).is_err(), "{bad}");
        }
        assert_eq!(Owner::try_from("0".to_string()).unwrap(), Owner::Id(0));
        assert!(matches!(
            Owner::try_from("core".to_string()).unwrap(),
            Owner::Name(_)
        ));
        assert!(Owner::try_from("Bad Name".to_string()).is_err());
    }

    #[test]
    fn ssh_keys() {
        let good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGa3d2C2Y9Y5wE8pCk2xQe2mC0vF0k3h1mJk6m1yN0tR me@laptop";
        assert!(ok::<SshKey>(good));
        assert!(!ok::<SshKey>("ssh-ed25519"));
        assert!(!ok::<SshKey>("ssh-foo AAAA"));
        assert!(!ok::<SshKey>("ssh-ed25519 not-base64!"));
        // A valid base64 blob of another key type.
        assert!(!ok::<SshKey>(
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGa3d2C2Y9Y5wE8pCk2xQe2mC0vF0k3h1mJk6m1yN0tR"
        ));
        assert!(!ok::<SshKey>(&format!("{good}\nssh-rsa x")));
    }

    #[test]
    fn units_and_others() {
        assert!(ok::<UnitName>("kubelet.service"));
        assert!(ok::<UnitName>("getty@ttyS0.service"));
        assert!(!ok::<UnitName>("kubelet"));
        assert!(!ok::<UnitName>("kubelet.exe"));
        assert!(!ok::<UnitName>("../x.service"));
        assert!(ok::<DropInName>("10-limits.conf"));
        assert!(!ok::<DropInName>("limits"));
        assert!(ok::<SysctlKey>("net.ipv4.ip_forward"));
        assert!(!ok::<SysctlKey>("net ipv4"));
        assert!(ok::<Sha256Hex>(&"a".repeat(64)));
        assert!(!ok::<Sha256Hex>(&"A".repeat(64)));
        assert!(ok::<Url>("https://updates.example.com/drover/"));
        assert!(!ok::<Url>("ftp://x"));
        assert!(!ok::<Url>("https:///x"));
        assert!(ok::<Channel>("stable"));
        assert!(!ok::<Channel>("Stable"));
        assert!(!ok::<UserName>("1abc"));
        assert!(ok::<UserName>("core"));
    }
}
