//! A container registry on loopback (Debian's `docker-registry`, the
//! CNCF distribution registry) and a container image built by the test:
//! `FROM scratch` with one static binary (Debian's `busybox-static`) and a
//! page it serves, written as an OCI image layout and pushed with
//! `skopeo`. The registry is a process this harness started, stopped by
//! its PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sha2::{Digest as _, Sha256};

/// A running registry.
pub struct Registry {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Registry {
    /// Starts a registry storing its blobs under `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let storage = dir.join("registry-storage");
        std::fs::create_dir_all(&storage)?;
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (Debian: docker-registry)")?;
        let mut r = Self { child, port };
        let start = Instant::now();
        loop {
            if answers(port) {
                return Ok(r);
            }
            if start.elapsed() > Duration::from_secs(20) || r.child.try_wait()?.is_some() {
                bail!(
                    "the registry did not answer: {}",
                    std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether the registry's API root answers 200 (a plain HTTP/1.0 GET).
fn answers(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    if c.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    c.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file in an image: path inside it, bytes, mode.
pub type ImageFile = (&'static str, Vec<u8>, u32);

/// Writes an OCI image layout at `layout` holding a one-layer image of
/// `files` that runs `cmd`, and pushes it with `skopeo` to
/// `127.0.0.1:port/name`. Returns the manifest's digest.
pub fn push_scratch_image(
    layout: &Path,
    port: u16,
    name: &str,
    files: &[ImageFile],
    cmd: &[&str],
) -> anyhow::Result<String> {
    let tree = layout.with_extension("rootfs");
    let _ = std::fs::remove_dir_all(&tree);
    for (path, bytes, mode) in files {
        let p = tree.join(path);
        std::fs::create_dir_all(p.parent().expect("a parent"))?;
        std::fs::write(&p, bytes)?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(*mode))?;
    }
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let layer = layout.join("layer.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .args([
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--sort=name",
            "--mtime=@0",
            "-cf",
        ])
        .arg(&layer)
        .arg(".")
        .status()
        .context("running tar")?;
    if !st.success() {
        bail!("tar failed");
    }
    let put = |bytes: &[u8]| -> anyhow::Result<(String, usize)> {
        let digest = hex::encode(Sha256::digest(bytes));
        std::fs::write(blobs.join(&digest), bytes)?;
        Ok((format!("sha256:{digest}"), bytes.len()))
    };
    let (layer_digest, layer_size) = put(&std::fs::read(&layer)?)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest)?)?;
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }],
        }))?,
    )?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let o = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://127.0.0.1:{port}/{name}"))
        .output()
        .context("running skopeo (Debian: skopeo)")?;
    if !o.status.success() {
        bail!("skopeo copy: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(manifest_digest)
}

/// The static busybox of Debian's `busybox-static`.
pub fn static_busybox() -> PathBuf {
    PathBuf::from("/bin/busybox")
}
