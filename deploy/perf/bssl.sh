#!/usr/bin/env bash
# deploy/perf/bssl.sh OUT.json: pstd's VOPRF against BoringSSL's, one core,
# measured one right after the other in one run so both see the same
# machine: BoringSSL's own issuance benchmark (/work/shared/bin/bsslpst, a
# build of BoringSSL's PST code) and pstd's Go benchmarks of the same
# operation, plus pstd's redemption check and the SoftHSM record signature
# that each durable redemption adds. BATCH (10) and SECONDS (5) as for
# `bsslpst bench voprf BATCH SECONDS`.
set -euo pipefail
out=${1:?usage: $0 OUT.json}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bssl=${BSSLPST:-/work/shared/bin/bsslpst}
batch=${BATCH:-10}
secs=${SECONDS_PER:-5}
cd "$root"

b=$("$bssl" bench voprf "$batch" "$secs")
echo "BoringSSL: $b" >&2
bssl_tps=$(sed -nE 's/.* ([0-9.]+) tokens\/s.*/\1/p' <<<"$b")

g=$(go test -run '^$' -bench "^BenchmarkIssue\$/^batch=$batch\$|^BenchmarkRedeem\$" -benchtime "${secs}s" -cpu 1 ./signer/voprf/)
echo "$g" >&2
pstd_tps=$(awk -v b="batch=$batch" '$1 ~ "BenchmarkIssue/" b {for (i = 1; i < NF; i++) if ($(i+1) == "tokens/s") print $i}' <<<"$g")
redeem_ns=$(awk '$1 ~ /^BenchmarkRedeem/ {for (i = 1; i < NF; i++) if ($(i+1) == "ns/op") print $i}' <<<"$g")

# SoftHSM needs a token: a throwaway one, as the tests make it.
h=$(go test -run '^$' -bench '^BenchmarkSoftHSMSign$' -benchtime "${secs}s" -cpu 1 ./signer/hsm/ 2>/dev/null)
echo "$h" >&2
sign_ns=$(awk '$1 ~ /^BenchmarkSoftHSMSign/ {for (i = 1; i < NF; i++) if ($(i+1) == "ns/op") print $i}' <<<"$h")

jq -n --argjson batch "$batch" --argjson b "$bssl_tps" --argjson p "$pstd_tps" \
	--argjson r "$redeem_ns" --argjson s "${sign_ns:-0}" --arg when "$(date -u +%FT%TZ)" \
	'{measured: $when, batch: $batch, boringssl_issue_tokens_per_s: $b, pstd_issue_tokens_per_s: $p,
	  pstd_redeem_per_s: (1e9 / $r), softhsm_sign_per_s: (if $s > 0 then 1e9 / $s else 0 end)}' >"$out"
cat "$out"
