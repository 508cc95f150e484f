"""Where keyward's CPU goes per request: instruction counts under callgrind, by component.

Instruction counts do not depend on the machine's load, so builds can be compared on a busy
machine. keyward runs under `valgrind --tool=callgrind` (everything slows down about 50x, so
throughput figures mean nothing here); for each row, counting is switched on only while wrk
drives the row's load, then the dump is split by component from the symbol names. Kernel
time (the TCP path, fsync) is not seen by callgrind: bench/run.py measures it.

    KEYWARD_BIN=target/release/keyward python3 bench/profile.py   # DURATION=20 per row
"""
import os
import re
import subprocess
import sys
import tempfile
import shutil
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark's keyward set-up and wrk driver)

DURATION = int(os.environ.get("DURATION", "20"))
ROWS = (("ES256 sign", "es"), ("RS256 sign", "rs"), ("JWKS 200", None), ("JWKS 304", None))

# The first crate in a Rust symbol names its component; C symbols go by their object file.
COMPONENTS = (
    ("OpenSSL", lambda sym, obj: "libcrypto" in obj or "libssl" in obj),
    ("kernel entry (libc)", lambda sym, obj: "libc.so" in obj or "ld-linux" in obj),
    ("allocator (mimalloc)", lambda sym, obj: sym.startswith(("mi_", "_mi_")) or "mimalloc" in sym),
    ("SQLite", lambda sym, obj: "::" not in sym and "keyward" in obj),
)


def component(symbol, obj):
    for name, test in COMPONENTS:
        if test(symbol, obj):
            return name
    crate = re.search(r"([a-z_][a-z0-9_]*)::", symbol.lstrip("<&*"))
    name = crate.group(1) if crate else "other"
    groups = {"core": "std/core/alloc", "alloc": "std/core/alloc", "std": "std/core/alloc",
              "hashbrown": "std/core/alloc", "sqlx_core": "sqlx", "sqlx_sqlite": "sqlx",
              "tracing_core": "tracing", "tracing_subscriber": "tracing", "tracing": "tracing",
              "actix_http": "actix", "actix_web": "actix", "actix_server": "actix", "actix_rt": "actix",
              "actix_router": "actix", "actix_service": "actix", "actix_codec": "actix", "actix_utils": "actix",
              "josekit": "josekit", "serde_json": "serde_json", "serde": "serde_json"}
    return groups.get(name, name)


def annotate(path):
    """Exclusive instruction counts per component, from a callgrind dump."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", path],
                         capture_output=True, text=True, check=True).stdout
    totals = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([\s\d.]+%\)\s+)?(\S+?):(.*?)(?:\s+\[(.*)\])?$", line)
        if not m or m.group(2) == "PROGRAM" or "TOTALS" in line:
            continue
        count = int(m.group(1).replace(",", ""))
        name = component(m.group(3), m.group(4) or "")
        totals[name] = totals.get(name, 0) + count
    return totals


def main():
    work = tempfile.mkdtemp(prefix="keyward-profile-")
    server = run.Keyward(work)
    try:
        server.start()
        server.add_client()
        run.wait_for("the bench client", server.signs)
        run.stop(server.process)
        out = os.path.join(work, "callgrind.out")
        server.start(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"], 300)
        run.wait_for("the bench client", server.signs, 300)
        pid = server.process.pid
        results = {}
        for row, profile in ROWS:
            url = server.sign_url(profile) if profile else server.jwks_url()
            load = run.Load(row, pid)
            etag = run.http(url)[1]["ETag"] if row == "JWKS 304" else ""
            mode, arg, conns = ("sign", server.token, run.SIGN_CONNS) if profile else ("get", etag, run.JWKS_CONNS)
            # Warm up uncounted, then count only the measured run.
            subprocess.run(["wrk", "-t1", f"-c{conns}", "-d3s", "-s", run.LUA, url, "--", mode, arg],
                           capture_output=True, env=dict(os.environ, SIGN_BODY=run.SIGN_BODY))
            subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
            subprocess.run(["callgrind_control", "--instr=on", str(pid)], capture_output=True, check=True)
            saved_warmup, run.WARMUP, saved_duration, run.DURATION = run.WARMUP, 0, run.DURATION, DURATION
            load.run(row, url, conns, mode, arg)
            run.WARMUP, run.DURATION = saved_warmup, saved_duration
            subprocess.run(["callgrind_control", "--instr=off", str(pid)], capture_output=True, check=True)
            subprocess.run(["callgrind_control", "-d", row.replace(" ", "_"), str(pid)], capture_output=True,
                           check=True)
            time.sleep(1)
            dumps = sorted((f for f in os.listdir(work) if f.startswith("callgrind.out")),
                           key=lambda f: os.path.getmtime(os.path.join(work, f)))
            dump = os.path.join(work, dumps[-1])
            requests = load.rows[row]["requests"]
            results[row] = (requests, annotate(dump))
            keep = os.environ.get("KEEP_DUMPS")
            if keep:
                shutil.copy(dump, os.path.join(keep, f"{os.path.basename(run.BIN)}-{row.replace(' ', '_')}.callgrind"))
        run.stop(server.process)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"keyward {run.BIN}: instructions per request under callgrind (user space only)")
    for row, (requests, totals) in results.items():
        total = sum(totals.values())
        print()
        print(f"{row}: {requests:,.0f} requests, {total / requests:,.0f} instructions per request")
        print()
        print("| Component | Instructions/request | Share |")
        print("|---|---:|---:|")
        for name, count in sorted(totals.items(), key=lambda kv: -kv[1]):
            if count / total >= 0.005:
                print(f"| {name} | {count / requests:,.0f} | {100 * count / total:.1f}% |")


if __name__ == "__main__":
    main()
