//! Installs the Debian packages the tests and benches use, when missing.

use std::process::Command;

/// (command that must exist, Debian package that provides it)
const NEEDED: &[(&str, &str)] = &[
    ("veritysetup", "cryptsetup-bin"),
    ("cgpt", "cgpt"),
    ("sgdisk", "gdisk"),
    ("mkfs.erofs", "erofs-utils"),
];

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1 || test -x /usr/sbin/{cmd} || test -x /sbin/{cmd}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Installs whatever is missing with apt-get (needs root).
pub fn install() -> anyhow::Result<()> {
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        eprintln!(
            "xtask: test tools present ({})",
            NEEDED.iter().map(|n| n.1).collect::<Vec<_>>().join(", ")
        );
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    crate::run(Command::new("apt-get").args(["update", "-q"]))?;
    crate::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}
