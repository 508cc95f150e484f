#!/usr/bin/env bash
# Two builds of keyward measured alternately in one session, so that the machine's drift
# weighs on both alike: bench/run.sh runs for BEFORE, then for AFTER, ROUNDS times, and the
# sign rows of every run are printed side by side with their means and medians.
#
#   bash bench/compare.sh /tmp/keyward-before target/release/keyward
#   ROUNDS=5 SERVERS="node keyward" PEERS_DIR=/path/to/bench-peers bash bench/compare.sh A B
#
# ROUNDS (4); SERVERS ("keyward"; add "node" with PEERS_DIR to measure the node peer in every
# run too, or "keyward-pg" for the sign rows on PostgreSQL); HEAD_TO_HEAD (0) and
# OPENSSL_SECONDS (1) are passed on, as are DURATION and WARMUP. The runs' full reports are
# kept in a temporary folder whose path is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -eq 2 ]] || { echo "usage: bench/compare.sh BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
before=$(realpath "$1")
after=$(realpath "$2")
for binary in "$before" "$after"; do
    [[ -x $binary ]] || { echo "bench/compare.sh: $binary is not an executable" >&2; exit 2; }
done
export SERVERS=${SERVERS:-keyward} HEAD_TO_HEAD=${HEAD_TO_HEAD:-0} OPENSSL_SECONDS=${OPENSSL_SECONDS:-1}
rounds=${ROUNDS:-4}
out=$(mktemp -d /tmp/keyward-compare-XXXXXX)
for round in $(seq "$rounds"); do
    for side in before after; do
        binary=$before
        [[ $side == after ]] && binary=$after
        echo "bench/compare.sh: round $round of $rounds, $side ($binary)" >&2
        KEYWARD_BIN=$binary bash bench/run.sh >"$out/$round-$side.md"
    done
done
python3 - "$out" "$rounds" <<'EOF'
import re
import statistics
import sys

out, rounds = sys.argv[1], int(sys.argv[2])
# | Row | Server | Requests/s | p50 ms | p99 ms | Server CPU µs/req | Errors |
line = re.compile(r"^\| ((?:RS|ES|Ed)\w* sign) \| (\S+) \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \| ([\d,.]+) \| (\d+) \|$")
runs = {}
for r in range(1, rounds + 1):
    for side in ("before", "after"):
        with open(f"{out}/{r}-{side}.md") as f:
            for m in map(line.match, f):
                if m:
                    row, server = m.group(1), m.group(2)
                    name = f"{server} ({side}'s run)"
                    value = (float(m.group(3).replace(",", "")), float(m.group(4)), float(m.group(5)),
                             float(m.group(6).replace(",", "")), int(m.group(7)))
                    runs.setdefault((row, name), []).append(value)
print(f"| Row | Server | {' | '.join(f'round {r} req/s, µs CPU/req' for r in range(1, rounds + 1))} "
      "| mean req/s | median req/s | mean µs CPU/req | median µs CPU/req | errors |")
print("|---|---|" + "---|" * rounds + "---:|---:|---:|---:|---:|")
for (row, name), values in sorted(runs.items()):
    cells = " | ".join(f"{v[0]:,.0f}, {v[3]:.1f}" for v in values)
    rps, cpu = [v[0] for v in values], [v[3] for v in values]
    print(f"| {row} | {name} | {cells} | {statistics.mean(rps):,.0f} | {statistics.median(rps):,.0f} | "
          f"{statistics.mean(cpu):.1f} | {statistics.median(cpu):.1f} | {sum(v[4] for v in values)} |")
EOF
echo "bench/compare.sh: the runs' reports are in $out" >&2
