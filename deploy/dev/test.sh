#!/usr/bin/env bash
# deploy/dev/test.sh: the body of `make test` (run that, not this).
# Starts a throwaway PostgreSQL cluster, runs every Go test with the race
# detector against it (PSTD_TEST_REQUIRE=1: a missing dependency fails, it is
# never skipped), then a short fuzz pass, and always stops the cluster.
#
# Inputs (from the Makefile): GO, PKGS, FUZZ_TARGETS ("./pkg:FuzzName ..."),
# FUZZTIME.
set -euo pipefail
PSTD_SCRIPT=test.sh
# shellcheck source=deploy/dev/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PSTD_ROOT"

GO=${GO:-go}
PKGS=${PKGS:-./...}
FUZZ_TARGETS=${FUZZ_TARGETS:-}
FUZZTIME=${FUZZTIME:-50000x}

# Tests must not pick up a developer's sourced .pstd/env (or any other PSTD_
# setting) and touch the dev database or token. PSTD_TEST_* stays.
while read -r v; do
	case $v in PSTD_TEST_*) ;; PSTD_* | SOFTHSM2_CONF) unset "$v" ;; esac
done < <(compgen -e)

testdir=
cleanup() {
	local rc=$?
	if [[ -n $testdir ]]; then
		"$PSTD_ROOT/deploy/dev/testenv.sh" stop "$testdir" || true
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

testdir=$("$PSTD_ROOT/deploy/dev/testenv.sh" start)
set -a
# shellcheck source=/dev/null
. "$testdir/env"
set +a

# shellcheck disable=SC2086 # PKGS may name several package patterns
"$GO" test -count=1 -race -timeout 20m $PKGS

# The Kubernetes manifests' tests live in a module of their own
# (deploy/kubernetes/go.mod), which ./... does not reach.
(cd deploy/kubernetes && "$GO" test -count=1 -timeout 10m ./...)

for t in $FUZZ_TARGETS; do
	pkg=${t%%:*}
	name=${t##*:}
	[[ -n $pkg && -n $name && $pkg != "$t" ]] || pstd_die "FUZZ_TARGETS entry \"$t\" is not ./pkg:FuzzName"
	pstd_log "fuzz $pkg $name, -fuzztime=$FUZZTIME"
	"$GO" test -run='^$' -fuzz="^${name}\$" -fuzztime="$FUZZTIME" "$pkg"
done
