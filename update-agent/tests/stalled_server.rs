//! A server that stops sending in the middle of a payload is given up
//! after the stall timeout instead of holding the agent forever, and the
//! error says what was being fetched.
//!
//! The server here is a test double standing for a stalled web server or
//! a middlebox that keeps the connection open: a loopback socket that
//! answers the HEAD and the range request's headers, sends a few bytes of
//! the body and then nothing, without closing.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use drover_update_agent::source::{client, HttpSource};

const SIZE: u64 = 1 << 20;

fn stalled_server() -> (String, std::sync::mpsc::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/usr.img", l.local_addr().unwrap());
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in l.incoming() {
            let Ok(mut c) = conn else { break };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut head = String::new();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 2 {
                head.push_str(&line);
                line.clear();
            }
            if head.starts_with("HEAD") {
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\nAccept-Ranges: bytes\r\n\r\n"
                );
            } else {
                let _ = write!(
                    c,
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-{}/{SIZE}\r\nContent-Length: {SIZE}\r\n\r\n",
                    SIZE - 1
                );
                let _ = c.write_all(&[0x42; 4096]);
                let _ = c.flush();
                // Then nothing, with the connection held open.
                held.push(c);
                if done_rx.try_recv().is_ok() {
                    break;
                }
            }
        }
    });
    (url, done_tx)
}

#[test]
fn a_server_that_stops_sending_is_given_up_after_the_stall_timeout() {
    let (url, done) = stalled_server();
    let http = client(Duration::from_secs(2)).unwrap();
    let src = HttpSource::new(http, &url, SIZE).unwrap();
    let mut body = src.stream(0).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    let mut got = 0usize;
    let err = loop {
        match body.read(&mut buf) {
            Ok(0) => panic!("the stalled body ended after {got} bytes"),
            Ok(n) => got += n,
            Err(e) => break e,
        }
    };
    let waited = started.elapsed();
    let _ = done.send(());
    assert_eq!(got, 4096, "the bytes the server did send arrive");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(30),
        "gave up after {waited:?}"
    );
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(
        err.to_string().contains(&url) && err.to_string().contains("stopped sending"),
        "{err}"
    );
}
