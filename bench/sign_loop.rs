//! keyward's own `SigningKey::sign` in a loop on THREADS threads sharing one key, with no
//! HTTP, JSON body, ledger or policy: compared with `openssl speed rsa2048 ecdsap256`, it
//! tells what keyward's signing adds to OpenSSL's, apart from what the server adds.
//!
//! `cargo run --release --example sign_loop -- THREADS SECONDS` prints one JSON line per
//! algorithm, with the CPU time (user + system) per signature.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::keys::{generate, Algorithm, SigningKey};

/// This process's CPU time (user + system) in seconds, from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("reading /proc/self/stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("a /proc stat line").1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(2);
    let seconds: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(5);
    for algorithm in [Algorithm::Rs256, Algorithm::Es256] {
        let generated = generate(algorithm, 2048).expect("generating a key");
        let key = Arc::new(SigningKey::from_der(&generated.kid, algorithm, &generated.private_der).expect("loading"));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let cpu_before = cpu_seconds();
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let key = Arc::clone(&key);
                std::thread::spawn(move || {
                    let mut signed = 0u64;
                    while Instant::now() < deadline {
                        let mut claims = serde_json::Map::new();
                        claims.insert("iss".into(), "https://bench.example".into());
                        claims.insert("sub".into(), format!("acct-{signed}").into());
                        claims.insert("aud".into(), "https://partner.example/token".into());
                        claims.insert("exp".into(), 1_800_000_000.into());
                        key.sign(claims).expect("signing");
                        signed += 1;
                    }
                    signed
                })
            })
            .collect();
        let signed: u64 = workers.into_iter().map(|w| w.join().expect("a signing thread")).sum();
        let cpu_us = (cpu_seconds() - cpu_before) * 1e6 / signed as f64;
        println!(
            "{{\"alg\": \"{}\", \"threads\": {threads}, \"signed\": {signed}, \"per_second\": {:.0}, \"cpu_us\": {cpu_us:.1}}}",
            algorithm.as_str(),
            signed as f64 / seconds as f64
        );
    }
}
