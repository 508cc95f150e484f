"""Drives keyward with wrk and prints the benchmark table (called by bench/run.sh)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BIN = os.path.abspath("target/release/keyward")
SIGN_LOOP = os.path.abspath("target/release/examples/sign_loop")
CORES = os.cpu_count()
DURATION = int(os.environ.get("DURATION", "10"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
TICKS = os.sysconf("SC_CLK_TCK")

CONFIG = """
[server]
public_addr = "127.0.0.1:0"
internal_addr = "127.0.0.1:0"
database_url = "sqlite://{dir}/keyward.db"
master_key_file = "{dir}/master.key"
rate_limit = 100000000
rate_burst = 100000000

[[key_set]]
name = "rs"
algorithm = "RS256"
jwks_paths = ["/.well-known/jwks.json"]

[[key_set]]
name = "es"
algorithm = "ES256"
jwks_paths = ["/es/jwks.json"]

[[profile]]
name = "rs"
key_set = "rs"
issuer = "https://bench.example"
audience = "https://partner.example/token"

[[profile]]
name = "es"
key_set = "es"
issuer = "https://bench.example"
audience = "https://partner.example/token"
"""

POST_LUA = """
wrk.method = "POST"
wrk.body = '{"sub":"acct-1"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEYWARD_TOKEN")
"""


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def to_ms(value):
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url, threads, extra, env):
    cmd = ["wrk", f"-t{threads}", f"-c{CONNECTIONS}", f"-d{DURATION}s", "--latency", *extra, url]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return requests, rps, to_ms(latency["50"]), to_ms(latency["99"]), errors


def openssl_speed(processes):
    """OpenSSL's own microseconds per signature on one core: alone, or with `processes` busy."""
    multi = ["-multi", str(processes)] if processes > 1 else []
    out = subprocess.run(
        ["openssl", "speed", "-seconds", "5", *multi, "rsa2048", "ecdsap256"], capture_output=True, text=True, check=True
    ).stdout
    rsa = float(re.search(r"^rsa\s+2048 bits\s+\S+s\s+\S+s\s+([\d.]+)", out, re.M).group(1))
    ec = float(re.search(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)", out).group(1))
    return {"RS256 sign": 1e6 * processes / rsa, "ES256 sign": 1e6 * processes / ec}


def sign_loop():
    """keyward's own signing code in a loop on every core, without the server."""
    out = subprocess.run([SIGN_LOOP, str(CORES), "5"], capture_output=True, text=True, check=True).stdout
    return {f"{row['alg']} sign": row for row in map(json.loads, out.splitlines())}


def main():
    work = tempfile.mkdtemp(prefix="keyward-bench-")
    config = os.path.join(work, "keys.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(dir=work))
    lua = os.path.join(work, "post.lua")
    with open(lua, "w") as f:
        f.write(POST_LUA)
    env = dict(os.environ, RUST_LOG="warn,keyward::cli=info", KEYWARD_LOG_FORMAT="json")
    log = open(os.path.join(work, "serve.log"), "w+")
    server = subprocess.Popen([BIN, "--config", config, "serve"], stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        public = internal = None
        for _ in range(200):
            log.seek(0)
            for line in log:
                if '"listening"' in line:
                    fields = json.loads(line)["fields"]
                    public, internal = fields["public"], fields["internal"]
            if public:
                break
            time.sleep(0.05)
        if not public:
            sys.exit("keyward did not start; see " + log.name)
        token = subprocess.run(
            [BIN, "--config", config, "clients", "add", "bench", "--profiles", "rs,es"],
            capture_output=True, text=True, check=True, env=env,
        ).stdout.strip()
        time.sleep(1.5)  # the server picks up the new client within a second
        idle_rss = rss_mib(server.pid)

        peak = [idle_rss]
        sampling = [True]

        def sample():
            while sampling[0]:
                peak[0] = max(peak[0], rss_mib(server.pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample)
        sampler.start()
        rows = []
        wrk_env = dict(os.environ, KEYWARD_TOKEN=token)
        for name, profile in (("RS256 sign", "rs"), ("ES256 sign", "es")):
            url = f"http://{internal}/v1/profiles/{profile}/sign"
            before = cpu_seconds(server.pid)
            requests, rps, p50, p99, errors = wrk(url, 2, ["-s", lua], wrk_env)
            cpu_us = (cpu_seconds(server.pid) - before) * 1e6 / max(requests, 1)
            rows.append((name, rps, p50, p99, cpu_us, errors))
        jwks_url = f"http://{public}/.well-known/jwks.json"
        etag = urllib.request.urlopen(jwks_url).headers["ETag"]
        for name, extra in (("JWKS 200", []), ("JWKS 304", ["-H", f"If-None-Match: {etag}"])):
            before = cpu_seconds(server.pid)
            requests, rps, p50, p99, errors = wrk(jwks_url, 1, extra, wrk_env)
            cpu_us = (cpu_seconds(server.pid) - before) * 1e6 / max(requests, 1)
            rows.append((name, rps, p50, p99, cpu_us, errors))
        sampling[0] = False
        sampler.join()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(work, ignore_errors=True)

    alone, busy, floor = openssl_speed(1), openssl_speed(CORES), sign_loop()
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"keyward benchmark, {time.strftime('%Y-%m-%d')}, {CORES} cores, {cpu_model}")
    print(f"wrk: {CONNECTIONS} connections, {DURATION} s per row (2 threads for signing, 1 for JWKS)")
    print()
    print("| Load | Requests/s | p50 ms | p99 ms | Server CPU µs/req | vs OpenSSL alone | "
          f"vs OpenSSL on {CORES} cores | Errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rps, p50, p99, cpu_us, errors in rows:
        ratios = [f"{cpu_us / ref[name]:.2f}x" if name in ref else "-" for ref in (alone, busy)]
        print(f"| {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu_us:,.1f} | {ratios[0]} | {ratios[1]} | {errors} |")
    print()
    print("CPU µs per signature, same run:")
    print()
    print("| Signer | RS256 / RSA-2048 | ES256 / P-256 |")
    print("|---|---:|---:|")
    print(f"| openssl speed, one process | {alone['RS256 sign']:.0f} | {alone['ES256 sign']:.1f} |")
    print(f"| openssl speed -multi {CORES} (every core busy) | {busy['RS256 sign']:.0f} | {busy['ES256 sign']:.1f} |")
    print(f"| keyward's signing code in a loop on {CORES} threads, no server | {floor['RS256 sign']['cpu_us']:.0f} | "
          f"{floor['ES256 sign']['cpu_us']:.1f} |")
    print()
    print(f"server RSS: idle {idle_rss:.1f} MiB, peak under load {peak[0]:.1f} MiB")


if __name__ == "__main__":
    main()
