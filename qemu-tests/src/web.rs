//! nginx on a loopback port: the static web server the channel tests and
//! the life-cycle tests serve a published repository with.

use std::path::Path;
use std::process::Command;

/// nginx (Debian package nginx-light) serving `root` on a loopback port,
/// one process without a master, stopped by its PID on drop. Its access log
/// records the Range header of every request.
pub struct Nginx {
    child: std::process::Child,
    /// The port.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Serves `root`; `limit_rate` throttles each response (e.g. "20m").
    pub fn serve(root: &Path, limit_rate: Option<&str>) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..20 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let d = dir.path().display();
            let conf = format!(
                "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  log_format ranges '$request $status $http_range $body_bytes_sent';\n  \
                 access_log {d}/access.log ranges;\n  client_body_temp_path {d}/body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                 types {{ application/json json; }}\n  default_type application/octet-stream;\n  \
                 server {{\n    listen 127.0.0.1:{port};\n    root {};\n    {}\n  }}\n}}\n",
                root.display(),
                limit_rate
                    .map(|r| format!("limit_rate {r};"))
                    .unwrap_or_default()
            );
            std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
            let mut child = Command::new("nginx")
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("nginx (Debian package nginx-light; `cargo xtask deps` installs it)");
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_secs(10) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx { child, port, dir };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nginx did not start");
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The access log so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the first stream of the payload (`GET …/usr.img` with an open
/// range `bytes=N-`, or no range: 0) in nginx's access log after line
/// `from` started; closed ranges are the agent's header reads.
pub fn first_stream_after(log: &str, from: usize) -> Option<u64> {
    log.lines()
        .skip(from)
        .filter(|l| l.starts_with("GET ") && l.contains("usr.img HTTP/"))
        .find_map(|l| {
            let range = l.split_whitespace().nth(4)?;
            if range == "-" {
                return Some(0);
            }
            range
                .strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse()
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stream_is_the_first_open_range_after_the_line() {
        let log = "GET /tuf/stable/metadata/timestamp.json HTTP/1.1 200 - 611\n\
                   GET /tuf/stable/targets/releases/2.0.0/0123.usr.img HTTP/1.1 206 bytes=0- 1000\n\
                   GET /releases/2.0.0/usr.img HTTP/1.1 206 bytes=355123200-355123223 24\n\
                   GET /releases/2.0.0/usr.img HTTP/1.1 206 bytes=67108864- 1000\n";
        assert_eq!(first_stream_after(log, 0), Some(0));
        assert_eq!(first_stream_after(log, 2), Some(67_108_864));
        assert_eq!(first_stream_after(log, 4), None);
        let plain = "GET /releases/2.0.0/usr.img HTTP/1.1 200 - 355127296\n";
        assert_eq!(first_stream_after(plain, 0), Some(0));
    }
}
