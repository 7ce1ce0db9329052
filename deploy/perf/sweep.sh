#!/usr/bin/env bash
# deploy/perf/sweep.sh OUTDIR: the pstbench runs behind docs/PERFORMANCE.md's
# throughput, latency, memory and issuance-cost charts. Not part of `make
# test`. Needs a running pstd started with --batch-size 100 (for the batch
# sweep) and PSTD_RATE_LIMIT=0 (the load comes from one address, far beyond
# the default per-address limit) on a durable PostgreSQL, and:
#   TARGETS, METRICS  as for pstbench --targets/--metrics
#   PGDATA            to count PostgreSQL's CPU too (--cpu-pid), if local
#   CONCURRENCY="1 2 4 8 16 32 64"  BATCHES="1 2 5 10 20 50 100"
#   REQUESTS=2000 (per phase)
# Then: go run ./tools/perfplot -out docs/perf OUTDIR/*.json (from tools/perfplot).
set -euo pipefail
out=${1:?usage: $0 OUTDIR}
mkdir -p "$out"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench=${PSTBENCH:-$root/bin/pstbench}
args=(--targets "${TARGETS:-http://localhost:8480}" --format json --duration 15m --requests "${REQUESTS:-2000}")
[[ -n ${METRICS:-} ]] && args+=(--metrics "$METRICS")
pid() { [[ -n ${PGDATA:-} ]] && echo --cpu-pid "$(head -1 "$PGDATA/postmaster.pid")"; }

for c in ${CONCURRENCY:-1 2 4 8 16 32 64}; do
	# shellcheck disable=SC2046 # pid prints two words or none
	"$bench" "${args[@]}" $(pid) --workload both --batch 10 --concurrency "$c" --label concurrency >"$out/concurrency-$c.json" ||
		echo "concurrency $c: some requests failed (kept in the JSON: statuses, failures)" >&2
	jq -r '.phases[] | "concurrency \(.name) c='"$c"': \(.tokens_per_s|floor) tokens/s p99 \(.latency_ms.p99) ms"' "$out/concurrency-$c.json" >&2
done
for b in ${BATCHES:-1 2 5 10 20 50 100}; do
	# shellcheck disable=SC2046
	"$bench" "${args[@]}" $(pid) --workload issue --batch "$b" --concurrency 4 --requests $((${REQUESTS:-2000} * 10 / (b + 9))) --label batch >"$out/batch-$b.json" ||
		echo "batch $b: some requests failed (kept in the JSON)" >&2
	jq -r '.phases[] | "batch \(.name) b='"$b"': \(1e6 / .tokens_per_server_cpu_s | floor) CPU-us/token"' "$out/batch-$b.json" >&2
done
