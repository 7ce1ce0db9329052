#!/usr/bin/env bash
# softhsm/init-token.sh DIR LABEL [PINDIR]
#
# The one way this project makes a SoftHSM2 token: `make setup`
# (deploy/dev/setup.sh) and the Go tests (internal/testenv.NewToken) both
# run it. A token is kept entirely in a project-local DIR:
#   DIR/softhsm2.conf  SoftHSM2 configuration (point SOFTHSM2_CONF here)
#   DIR/tokens/        the token store (file backend)
#   PINDIR/pin         user PIN, mode 0600, generated if absent
#   PINDIR/so-pin      security-officer PIN, mode 0600, generated if absent
# PINDIR defaults to DIR. Several tokens may share one DIR (SoftHSM reads
# SOFTHSM2_CONF once per process, so a process's tokens must share it), each
# with its own PINDIR; runs on the same DIR may be concurrent.
# The token labelled LABEL is initialised only if no token with that label
# exists yet, so running this again is harmless. System-wide SoftHSM state
# (/etc/softhsm, /var/lib/softhsm) is never read or written, because every
# softhsm2-util call runs with SOFTHSM2_CONF=DIR/softhsm2.conf.
#
# PINs are never printed. softhsm2-util takes them only as arguments, so
# while the token is being initialised they are visible in the process list
# to other local users: acceptable for a development token, which is all
# this is.
set -euo pipefail
PSTD_SCRIPT=init-token.sh
# shellcheck source=deploy/dev/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../deploy/dev/lib.sh"

(($# == 2 || $# == 3)) || { echo "usage: $0 DIR LABEL [PINDIR]" >&2; exit 2; }
dir=$(pstd_abspath "$1")
label=$2
pindir=$(pstd_abspath "${3:-$1}")
((${#label} >= 1 && ${#label} <= 32)) || pstd_die "token label must be 1..32 characters"

command -v softhsm2-util >/dev/null || pstd_die "softhsm2-util not found (run deploy/dev/deps.sh)"

umask 077
mkdir -p "$dir/tokens" "$pindir"
chmod 0700 "$dir" "$dir/tokens" "$pindir"
dir=$(cd "$dir" && pwd -P)
pindir=$(cd "$pindir" && pwd -P)

conf="$dir/softhsm2.conf"
body="# Written by pstd softhsm/init-token.sh. DEVELOPMENT ONLY.
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false"
# Replaced atomically: a concurrent run's softhsm2-util must never read a
# half-written file.
if [[ ! -f $conf ]] || [[ $(cat "$conf") != "$body" ]]; then
	printf '%s\n' "$body" >"$conf.$$.tmp"
	mv "$conf.$$.tmp" "$conf"
fi
chmod 0600 "$conf"
export SOFTHSM2_CONF=$conf

# softhsm2-util prints the 32-byte label space padded: "Label: pstd-dev   ".
token_exists() {
	softhsm2-util --show-slots 2>/dev/null |
		awk -v want="$label" '
			/^[[:space:]]*Label:/ { sub(/^[[:space:]]*Label:[[:space:]]*/, ""); sub(/[[:space:]]+$/, ""); if ($0 == want) found = 1 }
			END { exit !found }'
}

if token_exists; then
	for f in pin so-pin; do
		[[ -s $pindir/$f ]] || pstd_die "token \"$label\" exists but $pindir/$f is missing; remove $dir to start over"
		chmod 0600 "$pindir/$f"
	done
	pstd_log "token \"$label\" already exists in $dir"
	exit 0
fi

for f in pin so-pin; do
	if [[ ! -s $pindir/$f ]]; then
		# 32 hex digits (128 bits); SoftHSM accepts PINs of 4..255 bytes.
		pstd_random_hex 16 >"$pindir/$f.tmp"
		mv "$pindir/$f.tmp" "$pindir/$f"
	fi
	chmod 0600 "$pindir/$f"
done

pin=$(<"$pindir/pin")
so_pin=$(<"$pindir/so-pin")
if ! out=$(softhsm2-util --init-token --free --label "$label" --pin "$pin" --so-pin "$so_pin" 2>&1 </dev/null); then
	# softhsm2-util never echoes the PINs, so its output is safe to show.
	printf '%s\n' "$out" >&2
	pstd_die "softhsm2-util --init-token failed"
fi
token_exists || pstd_die "token \"$label\" not visible after initialisation"
pstd_log "initialised token \"$label\" in $dir"
