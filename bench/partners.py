"""JWKS throughput and server CPU per request with partner matching off and on.

Off: no [[partner]] (fetches are still counted per user agent, as always). On: a gating
partner whose address range and user-agent pattern match every request, so each fetch is
matched, aggregated in memory with the kids it holds, and written in the next batch.

    KEYWARD_BIN=target/release/keyward python3 bench/partners.py   # DURATION=10 per row
"""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark's keyward set-up and wrk driver)

PARTNER = """
[[partner]]
name = "bench"
key_sets = ["rs", "es"]
match = { cidrs = ["127.0.0.0/8"], user_agent = "^npm-partner-auth/" }
gate_handover = true
"""


def measure(label, extra):
    work = tempfile.mkdtemp(prefix="keyward-bench-partners-")
    server = run.Keyward(work)
    with open(server.config, "a") as f:
        f.write(extra)
    server.start()
    try:
        url = server.jwks_url()
        etag = run.http(url)[1]["ETag"]
        load = run.Load(label, server.process.pid)
        load.run("JWKS 200", url, run.JWKS_CONNS, "get", "")
        load.run("JWKS 304", url, run.JWKS_CONNS, "get", etag)
        return load
    finally:
        run.stop(server.process)
        shutil.rmtree(work, ignore_errors=True)


def main():
    # wrk sends it (load.lua), so that with matching on every fetch is the partner's.
    os.environ["USER_AGENT"] = "npm-partner-auth/1.0"
    loads = [measure("off", ""), measure("on", PARTNER)]
    print(f"JWKS with partner matching off and on, {run.CORES} cores, {run.DURATION}s per row, "
          f"{run.JWKS_CONNS} connections")
    print()
    print("| Row | Matching | Requests/s | p50 ms | p99 ms | Server CPU µs/req | Errors |")
    print("|---|---|---|---|---|---|---|")
    for row in ("JWKS 200", "JWKS 304"):
        for load in loads:
            r = load.rows[row]
            print(f"| {row} | {load.label} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                  f"{r['cpu']:,.1f} | {r['errors']} |")


if __name__ == "__main__":
    main()
