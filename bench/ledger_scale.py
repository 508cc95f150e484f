"""The ledger at scale (called by bench/ledger_scale.sh): ES256 signing with N rows already in
the ledger, on SQLite and on PostgreSQL, while the first scheduler pass prunes the rows past
`ledger_retention`, and after.

For each store and each N of LEDGER_ROWS:
  1. keyward creates a fresh database (its own schema and migrations) and a client;
  2. N rows are written straight into its `issuance` table with SQL (SQLite: a recursive CTE,
     a million rows per transaction, through Python's sqlite3; PostgreSQL: generate_series
     through psql, with the day partitions created when the table is partitioned): spread
     evenly over the DAYS days before now, oldest first (as real traffic appends them), the
     subjects drawn at random among 100,000, time-ordered jtis;
  3. keyward starts with `ledger_retention` = DAYS - EXPIRED_DAYS days, so its first
     scheduler pass finds EXPIRED_DAYS days of rows to prune: the "pruning" row is wrk for
     PRUNE_SECONDS from that start; then, once no expired row is left, the "steady" row
     (WARMUP + DURATION s);
  4. disk bytes per million rows: the database file (SQLite, after a checkpoint) or the
     ledger's tables and indexes (PostgreSQL).
With MIGRATION_ROWS (say "5000000"), first the PostgreSQL day-layout migration timed on a
ledger of that many rows in the old layout (psql applies the migrations). With BASELINE_BIN (an older build): first the same on a database the older build created
and filled, then the new build started on that database (its migration timed: the server's
start to listening), its retention EXPIRED_DAYS shorter again so it prunes as many rows.

Environment: KEYWARD_BIN (required), BASELINE_BIN, MIGRATION_ROWS, LEDGER_ROWS ("0 10000000"), STORES
("sqlite postgres"), DAYS (90), EXPIRED_DAYS (9), PRUNE_SECONDS (30), DURATION (10), WARMUP (2),
SIGN_CONNS (16). Everything it starts it stops; its folder (under TMPDIR) is removed.
"""
import glob
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (the servers, clients and wrk rows of the main benchmark)

ROWS = [int(n) for n in os.environ.get("LEDGER_ROWS", "0 10000000").split()]
STORES = os.environ.get("STORES", "sqlite postgres").split()
BASELINE = os.environ.get("BASELINE_BIN")
DAYS = int(os.environ.get("DAYS", "90"))
EXPIRED_DAYS = int(os.environ.get("EXPIRED_DAYS", "9"))
PRUNE_SECONDS = int(os.environ.get("PRUNE_SECONDS", "30"))
DAY = 86_400
CHUNK = 1_000_000
RESULTS = []


def wrk(url, token, seconds):
    command = ["wrk", "-t1", f"-c{R.SIGN_CONNS}", f"-d{seconds}s", "--latency", "-s", R.LUA, url, "--", "sign", token]
    out = subprocess.run(command, env=dict(os.environ, SIGN_BODY=R.SIGN_BODY), capture_output=True, text=True)
    line = re.search(r"^RESULT (.*)$", out.stdout, re.M)
    if not line:
        sys.exit(f"bench: wrk gave no result:\n{out.stdout}{out.stderr}")
    r = {k: int(v) for k, v in (kv.split("=") for kv in line.group(1).split())}
    return {"rps": r["requests"] / (r["duration_us"] / 1e6), "p50": r["p50_us"] / 1000, "p99": r["p99_us"] / 1000,
            "max": r["max_us"] / 1000, "errors": r["status_err"] + r["sock_err"]}


def record(store, build, rows, phase, result, extra=""):
    RESULTS.append((store, build, rows, phase, result, extra))
    print(f"bench: {store:8} {build:8} {rows:>11,} {phase:8} {result['rps']:8,.0f}/s p50 {result['p50']:.2f} ms "
          f"p99 {result['p99']:.2f} ms max {result['max']:.0f} ms errors {result['errors']} {extra}",
          file=sys.stderr, flush=True)


class Server(R.Keyward):
    """keyward (binary `binary`) with a given ledger retention, in days."""

    def __init__(self, work, binary, database_url, retention_days):
        self.binary, self.retention_days = binary, retention_days
        super().__init__(work, database_url=database_url)

    def use_tls(self, certificate):
        super().use_tls(certificate)
        with open(self.config) as f:
            text = f.read()
        with open(self.config, "w") as f:
            f.write(text.replace("[server]\n", f'[server]\nledger_retention = "{self.retention_days}d"\n', 1))

    def start(self, wrapper=(), timeout=600):
        R.BIN = self.binary
        super().start(wrapper, timeout)

    def add_client(self):
        R.BIN = self.binary
        super().add_client()


def fill_sqlite(path, rows, now):
    start = now - DAYS * DAY
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous = OFF")
    con.execute("PRAGMA cache_size = -1000000")
    for first in range(0, rows, CHUNK):
        count = min(CHUNK, rows - first)
        con.execute(
            "INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names) "
            "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1 + ?2) "
            "SELECT printf('%012x%012x', (?3 + i * ?4 / ?5) * 1000, i), 'es', 'bench', "
            "'acct_' || (abs(random()) % 100000), 'fill', 'ES256', ?3 + i * ?4 / ?5, ?3 + i * ?4 / ?5 + 300, "
            "'[\"sub\"]' FROM n",
            (first, count, start, DAYS * DAY, rows))
        con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def psql(url, sql):
    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    return subprocess.run([f"{bindir}/psql", url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], check=True,
                          capture_output=True, text=True).stdout.strip()


def fill_postgres(url, rows, now):
    start = now - DAYS * DAY
    partitioned = psql(url, "SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'issuance'::regclass") == "1"
    if partitioned:
        # The days keyward has not made (it makes yesterday's to a week ahead), as it makes them.
        psql(url, f"""DO $$ DECLARE d BIGINT; name TEXT; BEGIN
            FOR d IN {start // DAY}..{now // DAY} LOOP
                name := 'issuance_p' || to_char(to_timestamp(d * 86400) AT TIME ZONE 'UTC', 'YYYYMMDD');
                IF to_regclass(name) IS NULL AND NOT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c
                        ON c.oid = i.inhrelid WHERE i.inhparent = 'issuance'::regclass AND c.relname = 'issuance_legacy') THEN
                    EXECUTE format('CREATE TABLE %I (LIKE issuance INCLUDING DEFAULTS)', name);
                    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (jti)', name || '_jti', name);
                    EXECUTE format('ALTER TABLE issuance ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                                   name, d * 86400, (d + 1) * 86400);
                END IF;
            END LOOP; END $$""")
    for first in range(0, rows, CHUNK * 2):
        count = min(CHUNK * 2, rows - first)
        psql(url, f"""INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names)
            SELECT lpad(to_hex(t * 1000), 12, '0') || lpad(to_hex(i), 12, '0'), 'es', 'bench',
                   'acct_' || floor(random() * 100000)::INT, 'fill', 'ES256', t, t + 300, '["sub"]'
            FROM (SELECT i, {start} + i * {DAYS * DAY}::BIGINT / {rows} AS t
                  FROM generate_series({first}, {first + count - 1}) AS i) AS g""")
    psql(url, "VACUUM ANALYZE issuance")


def ledger_bytes(store, work, url):
    if store == "sqlite":
        return sum(os.path.getsize(p) for p in glob.glob(os.path.join(work, "keyward.db*")))
    return int(psql(url, "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) + pg_total_relation_size('issuance') "
                         "FROM pg_inherits WHERE inhparent = 'issuance'::regclass"))


def expired_left(store, server, rows):
    """Whether rows past the server's retention are still in its ledger."""
    limit = int(time.time()) - server.retention_days * DAY
    if store == "sqlite":
        con = sqlite3.connect(server.database_url.removeprefix("sqlite://"), timeout=30)
        try:
            return con.execute("SELECT 1 FROM issuance WHERE iat < ? LIMIT 1", (limit,)).fetchone() is not None
        finally:
            con.close()
    return psql(server.database_url, f"SELECT count(*) FROM (SELECT 1 FROM issuance WHERE iat < {limit} LIMIT 1) AS x") == "1"


def measure(store, build, server, rows, prune=True):
    """The rows of one server start: while it prunes (when there are rows), then steady."""
    started = time.monotonic()
    server.start()
    start_seconds = time.monotonic() - started
    try:
        R.wait_for("the bench client", server.signs, 120)
        url = server.sign_url("es")
        if rows and prune:
            record(store, build, rows, "pruning", wrk(url, server.token, PRUNE_SECONDS),
                   f"(the {PRUNE_SECONDS} s from the start)")
            began = time.monotonic()
            while expired_left(store, server, rows) and time.monotonic() - began < 900:
                time.sleep(2)
            print(f"bench: pruning finished {time.monotonic() - began + PRUNE_SECONDS:.0f} s after the start",
                  file=sys.stderr)
        if R.WARMUP:
            wrk(url, server.token, R.WARMUP)
        record(store, build, rows, "steady", wrk(url, server.token, R.DURATION))
    finally:
        R.stop(server.process)
    return start_seconds


def one(store, rows, binary, build, base_work):
    """A fresh database made by `binary`, filled with `rows`, measured; returns (work, url)."""
    work = os.path.join(base_work, f"{store}-{build}-{rows}")
    os.mkdir(work, 0o700)
    database = None
    url = f"sqlite://{work}/keyward.db"
    if store == "postgres":
        database, url = R.postgres(work)
    server = Server(work, binary, url, DAYS - EXPIRED_DAYS)
    server.start()
    server.add_client()
    R.stop(server.process)
    now = int(time.time())
    if rows:
        began = time.monotonic()
        (fill_sqlite(os.path.join(work, "keyward.db"), rows, now) if store == "sqlite" else fill_postgres(url, rows, now))
        print(f"bench: filled {rows:,} rows on {store} in {time.monotonic() - began:.0f} s", file=sys.stderr)
        size = ledger_bytes(store, work, url)
        print(f"bench: {store} {build}: {size / rows * 1e6 / 2**20:.0f} MiB per million rows", file=sys.stderr)
        RESULTS.append((store, build, rows, "bytes", size, ""))
    measure(store, build, server, rows)
    if rows:
        audit(store, build, server, rows, now)
    return work, url, database, server


def audit(store, build, server, rows, now):
    """`keyward audit`'s first page by subject, client, profile and key over a week, and its
    count of one day: the command's whole run (a process start included)."""
    week = ["--since", str(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 7 * DAY)))]
    day = time.strftime("%Y-%m-%d", time.gmtime(now - 2 * DAY))
    next_day = time.strftime("%Y-%m-%d", time.gmtime(now - DAY))
    for what, args in [("by sub, a week, first 50", ["--sub", "acct_4242", *week, "--limit", "50"]),
                       ("by client, a week, first 50", ["--client", "bench", *week, "--limit", "50"]),
                       ("by profile, a week, first 50", ["--profile", "es", *week, "--limit", "50"]),
                       ("by kid, a week, first 50", ["--kid", "fill", *week, "--limit", "50"]),
                       ("--count of one day", ["--since", day, "--until", next_day, "--count"])]:
        began = time.monotonic()
        output = [] if "--count" in args else ["--json"]
        out = subprocess.run([server.binary, "--config", server.config, "audit", *args, *output],
                             capture_output=True, text=True, env=server.env)
        seconds = time.monotonic() - began
        if out.returncode != 0:
            sys.exit(f"bench: keyward audit {args} failed: {out.stderr}")
        print(f"bench: {store} {build} {rows:,} rows: audit {what}: {seconds * 1000:.0f} ms", file=sys.stderr)
        RESULTS.append((store, build, rows, "audit", seconds, what))


def migration(rows):
    """The PostgreSQL day-layout migration on a ledger of `rows` rows in the old layout: the
    migrations before it applied with psql, the rows filled, then its SQL timed in one
    transaction (as sqlx runs it)."""
    base_work = tempfile.mkdtemp(prefix="keyward-ledger-migration-")
    os.chmod(base_work, 0o711)
    database = None
    try:
        database, url = R.postgres(base_work)
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "migrations", "postgres")
        files = sorted(glob.glob(os.path.join(folder, "*.sql")))
        layout = [f for f in files if "_issuance_by_day" in f][0]
        for f in files[:files.index(layout)]:
            psql(url, open(f).read())
        now = int(time.time())
        start = now - DAYS * DAY
        psql(url, f"""INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names)
            SELECT lpad(to_hex(t * 1000), 12, '0') || lpad(to_hex(i), 12, '0'), 'es', 'bench',
                   'acct_' || floor(random() * 100000)::INT, 'fill', 'ES256', t, t + 300, '["sub"]'
            FROM (SELECT i, {start} + i * {DAYS * DAY}::BIGINT / {rows} AS t
                  FROM generate_series(0, {rows - 1}) AS i) AS g""")
        psql(url, "VACUUM ANALYZE issuance")
        began = time.monotonic()
        psql(url, "BEGIN;\n" + open(layout).read() + "\nCOMMIT;")
        seconds = time.monotonic() - began
        print(f"bench: the day-layout migration on {rows:,} rows took {seconds:.2f} s "
              f"({seconds / rows * 1e6:.2f} s per million rows)", file=sys.stderr)
        RESULTS.append(("postgres", "migration", rows, "start", seconds, ""))
    finally:
        if database:
            R.stop(database)
        shutil.rmtree(base_work, ignore_errors=True)


def main():
    base_work = tempfile.mkdtemp(prefix="keyward-ledger-scale-")
    # PostgreSQL runs as nobody when this runs as root: it must reach its folder.
    os.chmod(base_work, 0o711)
    try:
        for rows in [int(n) for n in os.environ.get("MIGRATION_ROWS", "").split()]:
            migration(rows)
        for store in STORES:
            for rows in ROWS:
                if BASELINE:
                    work, url, database, old = one(store, rows, BASELINE, "baseline", base_work)
                    try:
                        if rows:
                            # The new build on the older build's ledger: its migration, then
                            # as many rows to prune as the older build pruned.
                            new = Server(work, R.BIN_NEW, url, DAYS - 2 * EXPIRED_DAYS)
                            new.token = old.token
                            seconds = measure(store, "migrated", new, rows)
                            RESULTS.append((store, "migrated", rows, "start", seconds, ""))
                            print(f"bench: {store}: the new build started (migrated) in {seconds:.1f} s",
                                  file=sys.stderr)
                    finally:
                        if database:
                            R.stop(database)
                        shutil.rmtree(work, ignore_errors=True)
                work, url, database, _ = one(store, rows, R.BIN_NEW, "new", base_work)
                if database:
                    R.stop(database)
                shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(base_work, ignore_errors=True)
        print("\n| store | build | ledger rows | phase | tokens/s | p50 | p99 | max | errors |")
        print("|---|---|---:|---|---:|---:|---:|---:|---:|")
        for store, build, rows, phase, result, extra in RESULTS:
            if phase == "bytes":
                print(f"| {store} | {build} | {rows:,} | disk | {result / rows * 1e6 / 2**20:.0f} MiB per million rows | | | | |")
            elif phase == "audit":
                print(f"| {store} | {build} | {rows:,} | keyward audit {extra} | {result * 1000:.0f} ms | | | | |")
            elif phase == "start":
                print(f"| {store} | {build} | {rows:,} | start (migration) | {result:.1f} s | | | | |")
            else:
                print(f"| {store} | {build} | {rows:,} | {phase} | {result['rps']:,.0f} | {result['p50']:.2f} ms | "
                      f"{result['p99']:.2f} ms | {result['max']:.0f} ms | {result['errors']} |")


if __name__ == "__main__":
    R.BIN_NEW = R.BIN
    main()
