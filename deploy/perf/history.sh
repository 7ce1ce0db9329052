#!/usr/bin/env bash
# deploy/perf/history.sh OUTDIR [STEP...]: redemption under steady traffic
# with 0, 1M and 10M spent tokens already stored in the signing key's
# redemptions partition (issue 12, item 3). NOT part of `make test`: the 10M
# load writes about 2 GB and takes minutes.
#
# Needs a running pstd on a durable PostgreSQL (not a --throwaway cluster),
# started with PSTD_RATE_LIMIT=0 (pstbench issues the tokens it redeems from
# one address, far beyond the default per-address limit), and these
# variables:
#   PSTD_DATABASE_URL  the database pstd uses (the partition is loaded here)
#   TARGETS            pstbench --targets (default http://localhost:8480)
#   METRICS            pstbench --metrics (default: TARGETS/metrics)
#   PGDATA             the cluster's data directory, when PostgreSQL runs on
#                      this machine: its CPU is then counted (--cpu-pid)
#   REQUESTS=10000 REPEATS=3 CONCURRENCY=16
#
# STEPs, run in order (default: all of them):
#   0 1000000 10000000  fill the partition up to that many rows with synthetic
#                       spent tokens, CHECKPOINT, then REPEATS pstbench
#                       --workload redeem runs of REQUESTS real tokens
#   burst               load 1M more rows and measure at once, before the
#                       checkpoint that load provokes has finished (the
#                       owner's "throughput halved" case)
# Each run's JSON goes to OUTDIR/redeem-<step>-<n>.json; a summary of the
# medians to stdout. pg_stat_bgwriter/pg_stat_wal deltas go beside them.
set -euo pipefail
out=${1:?usage: $0 OUTDIR [STEP...]}
shift
steps=("$@")
((${#steps[@]})) || steps=(0 1000000 10000000 burst)
mkdir -p "$out"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench=${PSTBENCH:-$root/bin/pstbench}
targets=${TARGETS:-http://localhost:8480}
requests=${REQUESTS:-10000}
repeats=${REPEATS:-3}
conc=${CONCURRENCY:-16}
psql=(psql -X -q -v ON_ERROR_STOP=1 -tA "${PSTD_DATABASE_URL:?set PSTD_DATABASE_URL}")
# --duration: a run slowed down by a checkpoint must finish, not be cut off.
args=(--targets "$targets" --workload redeem --requests "$requests" --concurrency "$conc" --format json --duration 15m)
[[ -n ${METRICS:-} ]] && args+=(--metrics "$METRICS")

# The partition of the key pstd signs with now: the newest active key.
key=$("${psql[@]}" -c "SELECT key_id FROM key_epoch_states WHERE state = 'active' ORDER BY not_before DESC LIMIT 1")
[[ -n $key ]] || { echo "no active key" >&2; exit 1; }
part=redemptions_k$key
echo "key $key, partition $part" >&2

# fill N: add synthetic rows until the partition holds N. Random 32-byte
# hashes (SHA-256 of random text), as real nonce hashes are.
fill() {
	local want=$1 have
	have=$("${psql[@]}" -c "SELECT count(*) FROM $part")
	((want > have)) || return 0
	echo "loading $((want - have)) rows into $part ($have there)" >&2
	"${psql[@]}" -c "INSERT INTO $part (key_id, nonce_hash, redeemed_at, record_id, redeeming_origin)
		SELECT $key, sha256(convert_to(random()::text || clock_timestamp()::text || g::text, 'UTF8')), now(),
		       'synthetic-' || g, 'https://rp.example'
		FROM generate_series(1, $((want - have))) g"
}

stats() {
	"${psql[@]}" -c "SELECT json_build_object(
		'checkpoints_timed', (SELECT checkpoints_timed FROM pg_stat_bgwriter),
		'checkpoints_req', (SELECT checkpoints_req FROM pg_stat_bgwriter),
		'buffers_checkpoint', (SELECT buffers_checkpoint FROM pg_stat_bgwriter),
		'wal_records', (SELECT wal_records FROM pg_stat_wal),
		'wal_fpi', (SELECT wal_fpi FROM pg_stat_wal),
		'wal_bytes', (SELECT wal_bytes FROM pg_stat_wal),
		'rows', (SELECT count(*) FROM $part),
		'index_bytes', pg_indexes_size('$part'),
		'table_bytes', pg_table_size('$part'))"
}

measure() {
	local step=$1 i pid=()
	[[ -n ${PGDATA:-} ]] && pid=(--cpu-pid "$(head -1 "$PGDATA/postmaster.pid")")
	for ((i = 1; i <= repeats; i++)); do
		stats >"$out/stats-$step-$i-before.json"
		# A run that is refused (e.g. 503 while a starved replica's readiness
		# probe timed out) is reported and tried once more, not averaged in.
		if ! "$bench" "${args[@]}" "${pid[@]}" --label "stored=$step" >"$out/redeem-$step-$i.json"; then
			echo "$step run $i failed; once more" >&2
			"$bench" "${args[@]}" "${pid[@]}" --label "stored=$step" >"$out/redeem-$step-$i.json"
		fi
		stats >"$out/stats-$step-$i-after.json"
		jq -r --arg s "$step" '.phases[0] | "\($s) run: \(.requests_per_s|floor) req/s p99 \(.latency_ms.p99) ms, \(.tokens_per_server_cpu_s|floor) tokens/CPU-s"' "$out/redeem-$step-$i.json" >&2
	done
}

for step in "${steps[@]}"; do
	case $step in
	burst)
		have=$("${psql[@]}" -c "SELECT count(*) FROM $part")
		fill $((have + 1000000))
		measure burst
		;;
	*)
		fill "$step"
		"${psql[@]}" -c CHECKPOINT
		measure "$step"
		;;
	esac
done

# Medians per step.
for step in "${steps[@]}"; do
	jq -s --arg s "$step" '{step: $s,
		rps: ([.[].phases[0].requests_per_s] | sort | .[length/2|floor]),
		p99_ms: ([.[].phases[0].latency_ms.p99] | sort | .[length/2|floor]),
		tokens_per_cpu_s: ([.[].phases[0].tokens_per_server_cpu_s] | sort | .[length/2|floor]),
		rps_all: [.[].phases[0].requests_per_s | floor], p99_all: [.[].phases[0].latency_ms.p99]}' "$out"/redeem-"$step"-*.json
done | jq -c .
