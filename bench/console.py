"""How long each console page takes on a store with 1,000 keys and 100 partners.

Two key sets of 500 keys each (all but the live ones retired long ago, as years of rotation
leave them), 100 partners with a day of fetches each, and a day of ledger rows. Signs in as
an admin client, then fetches each page ROUNDS times (default 50) one after another and
prints the median, 95th percentile and slowest answer per page, in milliseconds.

    KEYWARD_BIN=target/release/keyward python3 bench/console.py
"""
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark's keyward set-up)

KEYS_PER_SET = 500
PARTNERS = 100
ROUNDS = int(os.environ.get("ROUNDS", "50"))


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def partners_config():
    blocks = []
    for i in range(PARTNERS):
        blocks.append(f"""
[[partner]]
name = "partner-{i:03}"
key_sets = ["{'rs' if i % 2 else 'es'}"]
match = {{ cidrs = ["10.{i // 250}.{i % 250}.0/24"] }}
expect_fetch_every = "1h"
""")
    return "".join(blocks)


def fill(database, now):
    db = sqlite3.connect(database)
    for key_set in ("rs", "es"):
        row = db.execute("SELECT algorithm, public_jwk FROM keys WHERE key_set = ? LIMIT 1", (key_set,)).fetchone()
        live = db.execute("SELECT COUNT(*) FROM keys WHERE key_set = ?", (key_set,)).fetchone()[0]
        # One retired key per day before now, oldest first; signing periods never overlap.
        for n in range(KEYS_PER_SET - live):
            start = now - (KEYS_PER_SET - n + 2) * 86_400
            db.execute(
                "INSERT INTO keys (kid, key_set, algorithm, public_jwk, created_at, published_at, activates_at,"
                " deactivates_at, retired_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (f"bench-{key_set}-{n:04}", key_set, row[0], row[1], start - 3600, start - 3600, start,
                 start + 86_400, start + 2 * 86_400))
    for i in range(PARTNERS):
        name, key_set = f"partner-{i:03}", "rs" if i % 2 else "es"
        for hour in range(24):
            at = now - hour * 3600
            db.execute("INSERT INTO partner_fetches VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (name, key_set, f"10.{i // 250}.{i % 250}.7", '"x"', 60, at - 3599, at))
    for minute in range(24 * 60):
        for profile in ("rs", "es"):
            at = now - minute * 60
            db.execute("INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names)"
                       " VALUES (?, ?, 'bench', 'acct', NULL, 'ES256', ?, ?, '')",
                       (f"bench-{profile}-{minute}", profile, at, at + 300))
    db.commit()
    db.close()


def main():
    work = tempfile.mkdtemp(prefix="keyward-bench-console-")
    server = run.Keyward(work)
    with open(server.config, "a") as f:
        f.write(partners_config())
    server.env["KEYWARD_CONSOLE"] = "true"
    server.start()
    run.stop(server.process)
    fill(os.path.join(work, "keyward.db"), int(time.time()))
    admin = run.subprocess.run([run.BIN, "--config", server.config, "clients", "add", "ops", "--admin"],
                               capture_output=True, text=True, check=True, env=server.env).stdout.strip()
    server.start()
    try:
        base = f"http://{server.internal}/console"
        opener = urllib.request.build_opener(NoRedirect)
        with opener.open(f"{base}/sign-in") as response:
            form_cookie = response.headers["Set-Cookie"].split(";")[0]
            csrf = re.search(r'name="csrf" value="([^"]+)"', response.read().decode()).group(1)
        body = urllib.parse.urlencode({"csrf": csrf, "token": admin}).encode()
        request = urllib.request.Request(f"{base}/sign-in", data=body, headers={"Cookie": form_cookie})
        try:
            opener.open(request)
        except urllib.error.HTTPError as answer:  # the 303 that sets the session
            session = [c for c in answer.headers.get_all("Set-Cookie") if c.startswith("kw_console=")][0]
        cookie = {"Cookie": session.split(";")[0]}
        print(f"{'page':<10} {'bytes':>9} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
        for page in ("keys", "partners", "health"):
            times, size = [], 0
            for _ in range(ROUNDS):
                started = time.perf_counter()
                with opener.open(urllib.request.Request(f"{base}/{page}", headers=cookie)) as response:
                    assert response.status == 200, page
                    size = len(response.read())
                times.append((time.perf_counter() - started) * 1000)
            times.sort()
            p95 = times[int(len(times) * 0.95) - 1]
            print(f"{page:<10} {size:>9} {statistics.median(times):>10.1f} {p95:>8.1f} {times[-1]:>8.1f}")
    finally:
        run.stop(server.process)


if __name__ == "__main__":
    main()
