//! WAN emulation without netem: one network namespace per node on a Linux bridge, each node
//! with a real address (10.77.1.N) and an advertised one (10.77.0.N). Inside node X's
//! namespace, every other node Y's advertised address sits on X's `lo`, served by a delaying
//! TCP relay to Y's real address that holds each chunk for half the X↔Y round trip in each
//! direction. Every node dials advertised addresses, so each directed link has its own delay.
//! Needs root and `ip` (iproute2).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BRIDGE: &str = "atlasbr0";

pub fn real_ip(node: usize) -> String {
    format!("10.77.1.{node}")
}

pub fn advertised_ip(node: usize) -> String {
    format!("10.77.0.{node}")
}

pub fn namespace(node: usize) -> String {
    format!("atlasb{node}")
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `atlas-compare relay LISTEN TARGET ONE_WAY_MS [LISTEN TARGET ONE_WAY_MS ...]`: forwards
/// TCP connections from each `LISTEN` to its `TARGET`, delaying each direction by the given
/// milliseconds (so a round trip gains twice that).
pub fn relay_main(args: &[String]) -> Result<(), String> {
    if args.is_empty() || !args.len().is_multiple_of(3) {
        return Err("relay LISTEN TARGET ONE_WAY_MS [...]".into());
    }
    let mut threads = Vec::new();
    for triple in args.chunks(3) {
        let (listen, target) = (triple[0].clone(), triple[1].clone());
        let ms: f64 = triple[2]
            .parse()
            .map_err(|_| format!("delay `{}`", triple[2]))?;
        let delay = Duration::from_micros((ms * 1000.0) as u64);
        let listener = TcpListener::bind(&listen).map_err(|e| format!("{listen}: {e}"))?;
        threads.push(std::thread::spawn(move || {
            serve_relay(listener, target, delay)
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn serve_relay(listener: TcpListener, target: String, delay: Duration) {
    for incoming in listener.incoming() {
        let Ok(client) = incoming else { continue };
        let target = target.clone();
        std::thread::spawn(move || {
            let Ok(server) = TcpStream::connect(&target) else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                (Ok(c), Ok(s)) => (c, s),
                _ => return,
            };
            std::thread::spawn(move || pump(client, s2, delay));
            pump(server, c2, delay);
        });
    }
}

/// Copies `from` to `to`, each chunk released `delay` after it arrived (order kept).
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

/// The emulated network: namespaces, bridge, relays. Torn down on drop.
pub struct Wan {
    nodes: usize,
    relays: Vec<Child>,
}

impl Wan {
    /// Builds `nodes` namespaces; `rtt_ms(x, y)` is the round trip between nodes x and y
    /// (1-based); `ports` are the TCP ports to relay on every advertised address.
    pub fn build(
        nodes: usize,
        rtt_ms: impl Fn(usize, usize) -> f64,
        ports: &[u16],
        relay_bin: &std::path::Path,
    ) -> Result<Wan, String> {
        Wan::teardown(nodes);
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", "10.77.255.254/16", "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        let mut wan = Wan {
            nodes,
            relays: Vec::new(),
        };
        for n in 1..=nodes {
            let ns = namespace(n);
            let (inside, outside) = (format!("ab{n}i"), format!("ab{n}o"));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &inside, "type", "veth", "peer", "name", &outside,
            ])?;
            ip(&["link", "set", &outside, "master", BRIDGE])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            let addr = format!("{}/16", real_ip(n));
            ip(&[
                "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &inside,
            ])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", &inside, "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
            let mut triples = Vec::new();
            for m in (1..=nodes).filter(|m| *m != n) {
                let adv = format!("{}/32", advertised_ip(m));
                ip(&["netns", "exec", &ns, "ip", "addr", "add", &adv, "dev", "lo"])?;
                for port in ports {
                    triples.push(format!("{}:{port}", advertised_ip(m)));
                    triples.push(format!("{}:{port}", real_ip(m)));
                    triples.push(format!("{}", rtt_ms(n, m) / 2.0));
                }
            }
            let child = Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(relay_bin)
                .arg("relay")
                .args(&triples)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("relay: {e}"))?;
            wan.relays.push(child);
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(wan)
    }

    /// Runs `command` inside node `n`'s namespace.
    pub fn command(n: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &namespace(n)]).arg(program);
        c
    }

    fn teardown(nodes: usize) {
        for n in 1..=nodes.max(16) {
            let _ = ip(&["netns", "del", &namespace(n)]);
        }
        let _ = ip(&["link", "del", BRIDGE]);
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        for relay in &mut self.relays {
            let _ = relay.kill();
            let _ = relay.wait();
        }
        Wan::teardown(self.nodes);
    }
}
