//! `appstrate-runner probe-connect <ip:port>...`: a diagnostic that tries a TCP connection (2 s) to each
//! address and prints `<addr> connected` or `<addr> failed: <reason>`, one line each, exit 0 (exit 2 on
//! a bad address). The agent image holds nothing but the runner, so this is how an operator (and the
//! Docker isolation tests, through `docker exec`) checks what the agent container can reach. It needs no
//! environment and resolves no names.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Runs the probe when the first argument asks for it; `None` otherwise.
pub fn main_if_probe(args: &[String]) -> Option<i32> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
