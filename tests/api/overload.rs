//! Overload is shed, not queued: 2,000 connections signing as fast as they are answered
//! (far more than two cores sign) each get a token or a 503 with `Retry-After`, never a
//! dropped connection or a timeout; the process's memory stays bounded and the JWKS is
//! served throughout.
//!
//! The latency bounds (every sign answer within the deadline, the JWKS p99 within 3x of
//! its unloaded p99) are checked by `bench/overload.sh` on the release build: with 2,000
//! connections that ask again as soon as they are answered, each answer waits about
//! 2,000 / (answers per second), and the unoptimised build `cargo test` runs, on a machine
//! shared with other work, answers too few per second for a bound on that to mean
//! anything. This test prints the figures it saw.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keyward::store::Store;

use crate::helpers::{serve, test_config, text, wait_healthy};

const PROFILE: &str = "npm-sandbox";
const CONNECTIONS: u32 = 2_000;
const LOAD: Duration = Duration::from_secs(20);
/// The server's peak resident memory under the load, at most.
const RSS_BOUND_KB: u64 = 256 * 1024;

/// wrk's script, shared with the benchmark: counts the answers by status, and 503s
/// without Retry-After, and prints them with the latency figures on one `OVERLOAD` line.
const SCRIPT: &str = include_str!("../../bench/overload.lua");

/// The `OVERLOAD` line's `name=value` figures.
fn figure(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("wrk printed no {name}: {line}"))
}

/// The 99th percentile of `samples`.
fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

/// GETs `url` one after another on one connection for `period`: each answer's latency.
async fn jwks_latencies(url: &str, period: Duration) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < period {
        let sent = Instant::now();
        let response = http.get(url).timeout(Duration::from_secs(5)).send().await.expect("the JWKS answers");
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        latencies.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    latencies
}

/// A process's peak resident memory, in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn wrk(dir: &Path, url: &str, token: &str) -> std::process::Child {
    let script = dir.join("sign.lua");
    std::fs::write(&script, SCRIPT).unwrap();
    // At the signers' priority: the callers are other machines, so the load should cost
    // this machine no more than the server spends on it.
    let spawned = Command::new("nice")
        .args([
            "-n",
            "10",
            "wrk",
            "-t2",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{}s", LOAD.as_secs()),
            "--timeout",
            "10s",
        ])
        .arg("-s")
        .arg(&script)
        .args([url, "--", token])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    spawned.unwrap_or_else(|err| panic!("this test loads the server with wrk ({err}): apt-get install wrk"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_signing_connections_each_get_a_token_or_a_503_with_retry_after_and_the_jwks_throughout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // The shedding under test is the server's, not the per-client rate limit's.
    config.server.rate_limit = 1_000_000;
    config.server.rate_burst = 1_000_000;
    crate::replicas::write_master_key(dir.path());
    let store = Store::connect(&config.database()).await.unwrap();
    let token =
        keyward::ops::clients::add(&store, &config, "load", &[PROFILE.to_owned()], false, crate::helpers::now())
            .await
            .unwrap()
            .to_string();
    let http = reqwest::Client::new();
    let mut server = serve(dir.path(), &config, "warn,keyward::cli::serve=info");
    assert!(wait_healthy(&http, &mut server).await, "keyward did not come up");
    let jwks = format!("{}/.well-known/jwks.json", server.public);

    let mut unloaded = jwks_latencies(&jwks, Duration::from_secs(3)).await;
    let unloaded_p99 = p99(&mut unloaded);
    let load = wrk(dir.path(), &format!("{}/v1/profiles/{PROFILE}/sign", server.internal), &token);
    // Measured from the second second on, once every connection is open.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut loaded = jwks_latencies(&jwks, LOAD - Duration::from_secs(2)).await;
    let output = tokio::task::spawn_blocking(move || load.wait_with_output()).await.unwrap().unwrap();
    let loaded_p99 = p99(&mut loaded);
    let rss_kb = peak_rss_kb(server.child.id());
    let stdout = text(&output.stdout);
    let line = stdout.lines().find(|l| l.starts_with("OVERLOAD ")).unwrap_or_else(|| {
        panic!("wrk failed: {}\n{}", stdout, text(&output.stderr));
    });
    eprintln!("{stdout}");
    eprintln!(
        "JWKS p99 {unloaded_p99:?} unloaded ({} requests), {loaded_p99:?} under load ({} requests); \
         server peak RSS {} MiB",
        unloaded.len(),
        loaded.len(),
        rss_kb / 1024
    );

    let (ok, shed) = (figure(line, "ok"), figure(line, "shed"));
    assert!(ok > 0, "no token was signed under load: {line}");
    assert!(shed > 0, "2,000 connections were never shed: the test did not overload the server: {line}");
    assert_eq!(figure(line, "other"), 0, "answers other than 200 and 503: {line}");
    assert_eq!(figure(line, "bare"), 0, "503s without Retry-After: {line}");
    for error in ["connect", "read", "write", "timeout"] {
        assert_eq!(figure(line, error), 0, "{error} errors: the server must answer every connection: {line}");
    }
    assert!(rss_kb <= RSS_BOUND_KB, "peak RSS {rss_kb} kB over the bound of {RSS_BOUND_KB} kB");
    let slowest_jwks = loaded.iter().max().copied().unwrap_or_default();
    assert!(slowest_jwks < Duration::from_secs(1), "a JWKS answer took {slowest_jwks:?} under load");
    // The server is fine afterwards.
    let after = http.get(format!("{}/readyz", server.public)).send().await.unwrap();
    assert_eq!(after.status(), 200);
}
