//! etcd (Debian's `etcd-server`, 3.4) on loopback ports: one member or a
//! cluster of several, plain HTTP or TLS with client certificates, for the
//! reboot-lock tests, the QEMU fleet test and the fleet simulation. Every
//! member is a process this harness started, stopped by its PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Certificates for a TLS cluster, made with `openssl`: a CA, the
/// members' certificate (for 127.0.0.1; serverAuth and clientAuth, as
/// etcd's own gateway connects to its gRPC port with it) and a client's.
pub struct Tls {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The members' certificate and key.
    pub server: (PathBuf, PathBuf),
    /// A client certificate and key the CA signed.
    pub client: (PathBuf, PathBuf),
    /// A client certificate and key from another CA (refused).
    pub stranger: (PathBuf, PathBuf),
}

fn openssl(args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

impl Tls {
    /// Makes the certificates in `dir`.
    pub fn generate(dir: &Path) -> Tls {
        let p = |n: &str| dir.join(n);
        let ca = |name: &str| {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                s(&p(&format!("{name}-key.pem"))),
                "-out",
                s(&p(&format!("{name}.pem"))),
            ]);
        };
        ca("ca");
        ca("other-ca");
        let leaf = |name: &str, issuer: &str, ext: &str| {
            let key = p(&format!("{name}-key.pem"));
            let csr = p(&format!("{name}.csr"));
            let cert = p(&format!("{name}.pem"));
            let extfile = p(&format!("{name}.ext"));
            std::fs::write(&extfile, ext).unwrap();
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                s(&key),
                "-out",
                s(&csr),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                s(&csr),
                "-CA",
                s(&p(&format!("{issuer}.pem"))),
                "-CAkey",
                s(&p(&format!("{issuer}-key.pem"))),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                s(&extfile),
                "-out",
                s(&cert),
            ]);
            (cert, key)
        };
        let server = leaf(
            "member",
            "ca",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        );
        let client = leaf("node", "ca", "extendedKeyUsage=clientAuth\n");
        let stranger = leaf("stranger", "other-ca", "extendedKeyUsage=clientAuth\n");
        Tls {
            ca: p("ca.pem"),
            server,
            client,
            stranger,
        }
    }
}

/// One member.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// An etcd cluster on loopback.
pub struct Etcd {
    members: Vec<Member>,
    tls: bool,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts `n` members (plain HTTP) and waits until the cluster serves.
    pub fn start(n: usize) -> Etcd {
        Etcd::start_with(n, None)
    }

    /// Starts `n` members serving clients with TLS and requiring a client
    /// certificate `tls`'s CA signed.
    pub fn start_with(n: usize, tls: Option<&Tls>) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let cluster: Vec<String> = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let mut e = Etcd {
            members,
            tls: tls.is_some(),
            dir,
        };
        let cluster = cluster.join(",");
        for i in 0..n {
            e.spawn(i, &cluster, tls);
        }
        e.wait_healthy(Duration::from_secs(60));
        e
    }

    fn spawn(&mut self, i: usize, cluster: &str, tls: Option<&Tls>) {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name))).unwrap();
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                cluster,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", "drover-test"])
            // Small and fast: tests, not production.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(t) = tls {
            cmd.args(["--cert-file", s(&t.server.0), "--key-file", s(&t.server.1)])
                .args(["--trusted-ca-file", s(&t.ca), "--client-cert-auth"]);
        }
        let child = cmd
            .spawn()
            .expect("etcd (Debian package etcd-server; `cargo xtask deps` installs it)");
        self.members[i].child = Some(child);
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Member `i`'s log.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default()
    }

    /// Kills member `i` (SIGKILL, by PID), as a crashed machine.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until a quorum of the cluster answers writes: `etcdctl
    /// endpoint health` through a plain member, or a TCP connection to
    /// every member for TLS ones (their health needs a client certificate
    /// the caller has).
    fn wait_healthy(&mut self, limit: Duration) {
        let start = Instant::now();
        loop {
            for (i, m) in self.members.iter_mut().enumerate() {
                if let Some(c) = m.child.as_mut() {
                    if let Some(st) = c.try_wait().unwrap() {
                        panic!(
                            "etcd member {i} exited ({st}): {}",
                            std::fs::read_to_string(self.dir.path().join(format!("m{i}.log")))
                                .unwrap_or_default()
                        );
                    }
                }
            }
            let ok = if self.tls {
                self.members
                    .iter()
                    .all(|m| std::net::TcpStream::connect(("127.0.0.1", m.client_port)).is_ok())
                    && start.elapsed() > Duration::from_secs(2)
            } else {
                Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args([
                        "--endpoints",
                        &self.endpoints().join(","),
                        "--command-timeout=2s",
                    ])
                    .args(["put", "/drover-test/health", "ok"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            };
            if ok {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "etcd did not become healthy: {}",
                self.log(0)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `etcdctl get --prefix PREFIX` (plain clusters), key and value lines.
    pub fn etcdctl_get_prefix(&self, prefix: &str) -> String {
        let o = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints().join(",")])
            .args(["get", "--prefix", prefix])
            .output()
            .expect("etcdctl (Debian package etcd-client)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
