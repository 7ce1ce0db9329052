#!/usr/bin/env bash
# deploy/ha/test.sh: the body of `make test-ha` (run that, not this).
# Installs what is missing (deploy/ha/deps.sh), starts a throwaway
# Patroni cluster (deploy/ha/cluster.sh), runs the failover test
# e2e/ha_test.go (build tag `ha`) against it with two pstd replicas, and
# always tears the cluster down, on success, failure or interrupt.
#
# Two tests run, in this order (e2e/ha_test.go):
#   TestPatroniFailover             the failover on the settings of docs/HA.md:
#                                   no double spend, figures reported
#   TestPatroniFailoverAsyncControl the same with synchronous replication
#                                   switched off: it must find double spends,
#                                   which shows the first test can fail
#
# Inputs (from the Makefile): GO. PSTD_TEST_HA_RUN overrides the -run pattern.
set -euo pipefail
PSTD_SCRIPT=ha-test.sh
# shellcheck source=deploy/dev/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../dev/lib.sh"
cd "$PSTD_ROOT"
t0=$(date +%s%N)

GO=${GO:-go}

# As in deploy/dev/test.sh: never pick up a developer's PSTD_ settings.
while read -r v; do
	case $v in PSTD_TEST_*) ;; PSTD_* | SOFTHSM2_CONF) unset "$v" ;; esac
done < <(compgen -e)

"$PSTD_ROOT/deploy/ha/deps.sh"

dir=
cleanup() {
	local rc=$?
	if [[ -n $dir ]]; then
		if ((rc != 0)); then
			# Leave the evidence in the output before it is deleted.
			for f in "$dir"/pg*/patroni.log; do
				[[ -f $f ]] && { echo "--- tail of $f" >&2; tail -n 40 "$f" >&2; }
			done
		fi
		"$PSTD_ROOT/deploy/ha/cluster.sh" stop "$dir" || true
	fi
	pstd_log "total $(pstd_elapsed "$t0"), exit status $rc"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ok=0
for attempt in 1 2 3; do
	dir=$(mktemp -d "${TMPDIR:-/tmp}/pstd-ha.XXXXXX")
	if "$PSTD_ROOT/deploy/ha/cluster.sh" start "$dir"; then
		ok=1
		break
	fi
	pstd_log "cluster start attempt $attempt failed; retrying with other ports"
	"$PSTD_ROOT/deploy/ha/cluster.sh" stop "$dir" || true
	dir=
done
((ok)) || pstd_die "could not start the Patroni cluster"

set -a
# shellcheck source=/dev/null
. "$dir/env"
set +a
export PSTD_TEST_REQUIRE=1 PSTD_TEST_HA_CONTROL=1

"$GO" test -count=1 -race -tags ha -timeout 15m -v -run "${PSTD_TEST_HA_RUN:-^TestPatroniFailover(AsyncControl)?\$}" ./e2e/
