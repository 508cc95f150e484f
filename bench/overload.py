"""keyward under overload, on the release build (called by bench/overload.sh).

2,000 connections (CONNS) sign RS256 as fast as they are answered for DURATION s, with wrk
at nice 10 (the callers are other machines: the load should cost this one no more than
keyward spends on it), while one client fetches the JWKS one request after another. Before,
the same client measures the JWKS unloaded. Checks the issue's bounds and prints the row of
bench/RESULTS.md:
- every sign answer (200 or 503 with Retry-After, nothing else, no socket error) within
  request_deadline (2 s) + 250 ms;
- the JWKS p99 under the load within 3x its unloaded p99;
- keyward's peak RSS, stated.
Exits 1 when a bound is not met.
"""
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (its helpers: keyward on a fresh database, its clients)

CONNS = int(os.environ.get("CONNS", "2000"))
DURATION = int(os.environ.get("DURATION", "20"))
UNLOADED = int(os.environ.get("UNLOADED", "5"))
DEADLINE_MS = 2000
SLACK_MS = 250
LUA = os.path.join(run.HERE, "overload.lua")


def jwks_latencies(host_port, seconds, out):
    """GETs the JWKS on one connection, one after another, every 5 ms: latencies in ms."""
    host, port = host_port.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sent = time.perf_counter()
        connection.request("GET", "/.well-known/jwks.json")
        response = connection.getresponse()
        response.read()
        out.append(((time.perf_counter() - sent) * 1000, response.status))
        time.sleep(0.005)


def p99(samples):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)]


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    work = tempfile.mkdtemp(prefix="keyward-overload-")
    server = run.Keyward(work)
    try:
        server.start()
        server.add_client()
        unloaded = []
        jwks_latencies(server.public, UNLOADED, unloaded)
        loaded = []
        sampler = threading.Thread(target=lambda: (time.sleep(1), jwks_latencies(server.public, DURATION - 2, loaded)))
        sampler.start()
        out = subprocess.run(["nice", "-n", "10", "wrk", "-t2", f"-c{CONNS}", f"-d{DURATION}s", "--timeout", "30s",
                              "-s", LUA, server.sign_url("rs"), "--", server.token],
                             capture_output=True, text=True)
        sampler.join()
        rss = peak_rss_mib(server.process.pid)
    finally:
        run.stop(server.process)
        shutil.rmtree(work, ignore_errors=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("OVERLOAD ")), None)
    if line is None:
        sys.exit(f"bench: wrk gave no result:\n{out.stdout}{out.stderr}")
    figures = {k: int(v) for k, v in (pair.split("=") for pair in line.split()[1:])}
    seconds = figures["duration_us"] / 1e6
    unloaded_p99 = p99([ms for ms, _ in unloaded])
    loaded_p99 = p99([ms for ms, _ in loaded])
    jwks_errors = sum(1 for _, status in unloaded + loaded if status != 200)
    print(f"{CONNS} connections signing RS256 for {DURATION} s (wrk -t2 at nice 10), on {run.CORES} cores:")
    print(f"  answers/s {(figures['ok'] + figures['shed']) / seconds:,.0f}: tokens/s {figures['ok'] / seconds:,.0f}, "
          f"503/s {figures['shed'] / seconds:,.0f}; p50 {figures['p50_us'] / 1000:.0f} ms, "
          f"p99 {figures['p99_us'] / 1000:.0f} ms, max {figures['max_us'] / 1000:.0f} ms")
    print(f"  JWKS p99 {unloaded_p99:.2f} ms unloaded ({len(unloaded)} requests), {loaded_p99:.2f} ms under the load "
          f"({len(loaded)} requests, {loaded_p99 / unloaded_p99:.1f}x); keyward peak RSS {rss:.0f} MiB")
    failures = []
    if figures["max_us"] > (DEADLINE_MS + SLACK_MS) * 1000:
        failures.append(f"a sign answer took {figures['max_us'] / 1000:.0f} ms (bound {DEADLINE_MS + SLACK_MS} ms)")
    if figures["other"] or figures["bare"]:
        failures.append(f"{figures['other']} answers neither 200 nor 503, {figures['bare']} 503s without Retry-After")
    errors = sum(figures[k] for k in ("connect", "read", "write", "timeout"))
    if errors:
        failures.append(f"{errors} socket errors")
    if jwks_errors:
        failures.append(f"{jwks_errors} JWKS answers other than 200")
    if loaded_p99 > 3 * unloaded_p99:
        failures.append(f"JWKS p99 {loaded_p99:.2f} ms under load is over 3x the unloaded {unloaded_p99:.2f} ms")
    for failure in failures:
        print(f"  FAILED: {failure}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
