#!/usr/bin/env bash
# deploy/dev/setup.sh (`make setup`): the local development stack, all under
# .pstd/ in the checkout (or under $PSTD_DEV_STATE, see below). Idempotent;
# run it as often as you like.
#
#   .pstd/pg        PostgreSQL cluster on 127.0.0.1:$PSTD_DEV_PG_PORT (54329),
#                   database `pstd`, trust auth (DEVELOPMENT ONLY, see pg.sh)
#   .pstd/softhsm   SoftHSM2 token `pstd-dev`, PIN in .pstd/softhsm/pin (0600)
#   .pstd/env       settings for bin/pstd and bin/pstctl; `make run` loads it,
#                   or: set -a; . .pstd/env; set +a
#
# Then it builds and provisions: database migrations and the initial keys.
#
# PSTD_DEV_STATE (absolute path, default .pstd in the checkout) puts all of
# that state elsewhere; `make test` uses it with a scratch directory and a
# free PSTD_DEV_PG_PORT to smoke-test this script without touching .pstd/.
# deploy/dev/stop.sh honours it too.
set -euo pipefail
PSTD_SCRIPT=setup.sh
# shellcheck source=deploy/dev/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t0=$(date +%s%N)
cd "$PSTD_ROOT"

port=${PSTD_DEV_PG_PORT:-54329}
label=${PSTD_DEV_TOKEN_LABEL:-pstd-dev}
state=${PSTD_DEV_STATE:-$PSTD_ROOT/.pstd}
[[ $state == /* ]] || pstd_die "PSTD_DEV_STATE must be an absolute path, not \"$state\""
envfile="$state/env"

"$PSTD_ROOT/deploy/dev/deps.sh"

mkdir -p "$state"
# Traversable (not listable) for the postgres account, which owns .pstd/pg.
chmod 0711 "$state"

"$PSTD_ROOT/deploy/dev/pg.sh" start "$state/pg" "$port"

psql=("$(pstd_pg_bindir)/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres)
if [[ -z $("${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = 'pstd'") ]]; then
	"${psql[@]}" -c 'CREATE DATABASE pstd'
	pstd_log "created database pstd"
fi

"$PSTD_ROOT/softhsm/init-token.sh" "$state/softhsm" "$label"

# The listener and origin: the caller's PSTD_LISTEN / PSTD_ISSUER_ORIGIN
# if set (make run honours them), else 127.0.0.1:8480 and localhost.
listen=${PSTD_LISTEN:-127.0.0.1:8480}
origin=${PSTD_ISSUER_ORIGIN:-http://localhost:${listen##*:}}

# Written atomically and only when it changes. Values are shell-quoted.
{
	echo "# Written by deploy/dev/setup.sh; regenerated on every \`make setup\`. DEVELOPMENT ONLY."
	pstd_export PSTD_DATABASE_URL "postgres://postgres@127.0.0.1:$port/pstd?sslmode=disable"
	pstd_export PSTD_PKCS11_MODULE /usr/lib/softhsm/libsofthsm2.so
	pstd_export PSTD_PKCS11_TOKEN_LABEL "$label"
	pstd_export PSTD_PKCS11_PIN_FILE "$state/softhsm/pin"
	pstd_export SOFTHSM2_CONF "$state/softhsm/softhsm2.conf"
	pstd_export PSTD_ISSUER_ORIGIN "$origin"
	pstd_export PSTD_LISTEN "$listen"
} >"$envfile.tmp"
if cmp -s "$envfile.tmp" "$envfile"; then
	rm -f "$envfile.tmp"
else
	mv "$envfile.tmp" "$envfile"
	pstd_log "wrote $envfile"
fi

# provision: schema migrations and the initial keys (KEK and RR key in the
# token, sealed VOPRF keys in the database). Both commands must be
# idempotent, because setup runs on every `make setup` and `make run`.
provision() {
	[[ -x bin/pstctl ]] || pstd_die "bin/pstctl missing: make build failed?"
	(
		set -a
		# shellcheck source=/dev/null
		. "$envfile"
		set +a
		bin/pstctl migrate
		bin/pstctl keys init --reason "make setup: development stack"
	)
}

"${MAKE:-make}" --no-print-directory -C "$PSTD_ROOT" build
provision

pstd_log "ready in $(pstd_elapsed "$t0"): PostgreSQL 127.0.0.1:$port (db pstd), token \"$label\", settings in $envfile"
