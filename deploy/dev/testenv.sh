#!/usr/bin/env bash
# deploy/dev/testenv.sh start [DIR] | stop DIR
#
# A throwaway PostgreSQL cluster for `make test` (see internal/testenv).
# start creates it in DIR (default: a new mktemp directory under $TMPDIR or
# /tmp) on a random free port, with durability off, writes DIR/env:
#   export PSTD_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable
#   export PSTD_TEST_REQUIRE=1
# and prints DIR on stdout (logs go to stderr). stop shuts the cluster down
# and deletes DIR (only if start made it: DIR/.pstd-testenv marks it).
# DEVELOPMENT/TEST ONLY: trust authentication, fsync off.
set -euo pipefail
PSTD_SCRIPT=testenv.sh
# shellcheck source=deploy/dev/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { echo "usage: $0 start [DIR] | stop DIR" >&2; exit 2; }
(($# >= 1)) || usage

case $1 in
start)
	if [[ -n ${2:-} ]]; then
		dir=$(pstd_abspath "$2")
		mkdir -p "$dir"
	else
		dir=$(mktemp -d "${TMPDIR:-/tmp}/pstd-testenv.XXXXXX")
	fi
	dir=$(cd "$dir" && pwd -P)
	# mktemp makes 0700 directories; the postgres account must traverse it.
	chmod 0711 "$dir"
	touch "$dir/.pstd-testenv"
	ok=0
	for attempt in 1 2 3 4 5; do
		port=$(pstd_free_port)
		if "$PSTD_ROOT/deploy/dev/pg.sh" start "$dir/pg" "$port" --throwaway; then
			ok=1
			break
		fi
		pstd_log "attempt $attempt on port $port failed; retrying on another port"
	done
	((ok)) || pstd_die "could not start the test cluster in $dir"
	{
		echo "# Written by deploy/dev/testenv.sh. Throwaway test cluster, DEVELOPMENT/TEST ONLY."
		pstd_export PSTD_TEST_DATABASE_URL "postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
		echo 'export PSTD_TEST_REQUIRE=1'
	} >"$dir/env"
	echo "$dir"
	;;
stop)
	[[ -n ${2:-} ]] || usage
	dir=$(pstd_abspath "$2")
	[[ -d $dir ]] || exit 0
	"$PSTD_ROOT/deploy/dev/pg.sh" stop "$dir/pg"
	if [[ -f $dir/.pstd-testenv ]]; then
		rm -rf "$dir"
	else
		pstd_log "$dir was not made by testenv.sh start; stopped the cluster but left the directory"
	fi
	;;
*) usage ;;
esac
