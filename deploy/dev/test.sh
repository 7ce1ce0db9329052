#!/usr/bin/env bash
# deploy/dev/test.sh: the body of `make test` (run that, not this).
#  1. cgo: `CGO_ENABLED=0 go build ./cmd/...` must fail with the one line of
#     signer/hsm/nocgo.go that names cgo.
#  2. setup smoke: the real `make setup` (deploy/dev/setup.sh) with its state
#     in a scratch PSTD_DEV_STATE on a free port, run twice (it must be
#     idempotent: `make run` runs it every time), then `pstctl keys list` and
#     `pstctl commitment` against it, then deploy/dev/stop.sh. A developer's
#     own .pstd/ is never touched.
#  3. Starts a throwaway PostgreSQL cluster, runs every Go test with the race
#     detector against it (PSTD_TEST_REQUIRE=1: a missing dependency fails,
#     it is never skipped).
#     Then tools/perfplot's tests (its own module).
#  4. A short fuzz pass.
# Scratch state and clusters are removed on every exit, Ctrl-C included.
#
# Inputs (from the Makefile): MAKE, GO, PKGS, FUZZ_TARGETS
# ("./pkg:FuzzName ..."), FUZZTIME.
set -euo pipefail
PSTD_SCRIPT=test.sh
# shellcheck source=deploy/dev/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PSTD_ROOT"

MAKE=${MAKE:-make}
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
smokedir=
cleanup() {
	local rc=$?
	if [[ -n $smokedir ]]; then
		PSTD_DEV_STATE=$smokedir/state "$PSTD_ROOT/deploy/dev/stop.sh" || true
		rm -rf "$smokedir"
	fi
	if [[ -n $testdir ]]; then
		"$PSTD_ROOT/deploy/dev/testenv.sh" stop "$testdir" || true
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. A build without cgo names cgo, in one line (signer/hsm/nocgo.go).
check_nocgo() {
	local out
	if out=$(CGO_ENABLED=0 "$GO" build -o /dev/null ./cmd/pstd 2>&1); then
		pstd_die "CGO_ENABLED=0 go build ./cmd/pstd succeeded; it cannot work without the PKCS#11 binding"
	fi
	if [[ $out != *pstd_needs_cgo__build_with_CGO_ENABLED=1* || $(grep -c . <<<"$out") -ne 1 ]]; then
		printf '%s\n' "$out" >&2
		pstd_die "CGO_ENABLED=0 go build ./cmd/pstd must fail with the one line of signer/hsm/nocgo.go naming cgo"
	fi
	pstd_log "ok: a cgo-less build fails naming cgo"
}

# 2. The `make setup` path, on scratch state.
smoke_setup() {
	local t0 env out i
	t0=$(date +%s%N)
	smokedir=$(mktemp -d "${TMPDIR:-/tmp}/pstd-setup-smoke.XXXXXX")
	# The postgres account must traverse it (see deploy/dev/pg.sh).
	chmod 0711 "$smokedir"
	env=(PSTD_DEV_STATE="$smokedir/state" PSTD_DEV_PG_PORT="$(pstd_free_port)")
	for i in 1 2; do
		if ! out=$(env "${env[@]}" "$MAKE" --no-print-directory -C "$PSTD_ROOT" setup 2>&1); then
			printf '%s\n' "$out" >&2
			pstd_die "setup smoke: make setup (run $i) failed"
		fi
	done
	[[ ! -e $PSTD_ROOT/.pstd/env || $PSTD_ROOT/.pstd/env -ot $smokedir ]] ||
		pstd_die "setup smoke: make setup wrote .pstd/env although PSTD_DEV_STATE was set"
	out=$(
		set -a
		# shellcheck source=/dev/null
		. "$smokedir/state/env"
		set +a
		bin/pstctl keys list
	) || pstd_die "setup smoke: pstctl keys list failed"
	grep -Eq '^[0-9]+ +active ' <<<"$out" && grep -Eq ' signing ' <<<"$out" || {
		printf '%s\n' "$out" >&2
		pstd_die "setup smoke: pstctl keys list shows no active key epoch and signing record key"
	}
	out=$(
		set -a
		# shellcheck source=/dev/null
		. "$smokedir/state/env"
		set +a
		bin/pstctl commitment --chromium
	) || pstd_die "setup smoke: pstctl commitment failed"
	[[ $out == '{"http://localhost:8480":{'*'"PrivateStateTokenV1VOPRF":{'*'"keys":{'* ]] || {
		printf '%s\n' "$out" >&2
		pstd_die "setup smoke: pstctl commitment --chromium printed no PrivateStateTokenV1VOPRF commitment with keys"
	}
	PSTD_DEV_STATE=$smokedir/state "$PSTD_ROOT/deploy/dev/stop.sh"
	rm -rf "$smokedir"
	smokedir=
	pstd_log "ok: make setup on scratch state, twice, then pstctl keys list and commitment ($(pstd_elapsed "$t0"))"
}

check_nocgo
smoke_setup

testdir=$("$PSTD_ROOT/deploy/dev/testenv.sh" start)
set -a
# shellcheck source=/dev/null
. "$testdir/env"
set +a

# shellcheck disable=SC2086 # PKGS may name several package patterns
"$GO" test -count=1 -race -timeout 20m $PKGS
# tools/perfplot (docs/PERFORMANCE.md's charts) is its own module, so that
# gonum/plot's dependencies stay out of pstd's go.mod: test it apart.
(cd tools/perfplot && "$GO" test -count=1 ./...)

# The Kubernetes manifests' tests live in a module of their own
# (deploy/kubernetes/go.mod), which ./... does not reach.
(cd deploy/kubernetes && "$GO" test -count=1 -timeout 10m ./...)

# An entry may carry its own execution count, ./pkg:FuzzName@2000x, for
# targets whose every execution is expensive (curve arithmetic, signatures).
for t in $FUZZ_TARGETS; do
	pkg=${t%%:*}
	name=${t##*:}
	fuzztime=$FUZZTIME
	if [[ $name == *@* ]]; then
		fuzztime=${name##*@}
		name=${name%%@*}
	fi
	[[ -n $pkg && -n $name && $pkg != "$t" ]] || pstd_die "FUZZ_TARGETS entry \"$t\" is not ./pkg:FuzzName"
	pstd_log "fuzz $pkg $name, -fuzztime=$fuzztime"
	"$GO" test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$pkg"
done
