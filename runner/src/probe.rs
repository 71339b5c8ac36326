//! `appstrate-runner probe-connect <ip:port>...`: a diagnostic that tries a TCP connection (2 s) to each
//! address and prints `<addr> connected` or `<addr> failed: <reason>`, one line each, exit 0 (exit 2 on
//! a bad address). The agent image holds nothing but the runner, so this is how an operator (and the
//! Docker isolation tests, through `docker exec`) checks what the agent container can reach. It needs no
//! environment and resolves no names.
//!
//! `appstrate-runner probe-get http://<host>:<port>/<path>` sends one plain HTTP/1.0 GET (5 s) and
//! prints `HTTP <status> <body>` (or `failed: <reason>`), exit 0: how the slot tests ask the sidecar's
//! `/agent-config` from inside a container.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Runs the probe when the first argument asks for it; `None` otherwise.
pub fn main_if_probe(args: &[String]) -> Option<i32> {
    if args.first().map(String::as_str) == Some("probe-get") {
        for raw in &args[1..] {
            println!("{}", probe_get(raw));
        }
        return Some(0);
    }
    if args.first().map(String::as_str) != Some("probe-connect") {
        return None;
    }
    let mut code = 0;
    for raw in &args[1..] {
        match raw.parse::<SocketAddr>() {
            Ok(addr) => println!("{}", probe(addr)),
            Err(_) => {
                eprintln!("probe-connect: {raw} is not an ip:port address");
                code = 2;
            }
        }
    }
    Some(code)
}

fn probe(addr: SocketAddr) -> String {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => format!("{addr} connected"),
        Err(e) => format!("{addr} failed: {e}"),
    }
}

/// One GET of `url` (`http://host:port/path` only), answered as `HTTP <status> <body>`.
fn probe_get(url: &str) -> String {
    let Some(rest) = url.strip_prefix("http://") else {
        return "failed: only http:// URLs are probed".into();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = match authority.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        Ok(None) => return format!("failed: {authority} has no address"),
        Err(e) => return format!("failed: {authority}: {e}"),
    };
    let exchange = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        Ok(String::from_utf8_lossy(&raw).into_owned())
    };
    match exchange() {
        Ok(raw) => {
            let status = raw.split_whitespace().nth(1).unwrap_or("?").to_string();
            let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
            format!("HTTP {status} {}", body.trim())
        }
        Err(e) => format!("failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_prints_the_status_and_the_body() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = c.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            c.write_all(b"HTTP/1.1 410 Gone\r\ncontent-length: 4\r\n\r\ngone")
                .unwrap();
            req
        });
        assert_eq!(
            probe_get(&format!("http://{addr}/agent-config")),
            "HTTP 410 gone"
        );
        assert!(server
            .join()
            .unwrap()
            .starts_with("GET /agent-config HTTP/1.0"));
        assert!(probe_get("https://x").starts_with("failed:"));
    }

    #[test]
    fn reports_open_and_closed_ports() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = l.local_addr().unwrap();
        assert_eq!(probe(open), format!("{open} connected"));
        drop(l);
        assert!(probe(open).starts_with(&format!("{open} failed:")));
    }

    #[test]
    fn only_the_probe_argument_selects_the_probe() {
        assert_eq!(main_if_probe(&[]), None);
        assert_eq!(main_if_probe(&["x".into()]), None);
        assert_eq!(
            main_if_probe(&["probe-connect".into(), "nope".into()]),
            Some(2)
        );
    }
}
