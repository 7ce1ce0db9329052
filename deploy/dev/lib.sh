# shellcheck shell=bash
# Shared helpers for the development and test stack (deploy/dev/*.sh,
# softhsm/init-token.sh). Source it; it defines functions only and never
# changes shell options of the caller beyond what the caller already set.
#
# Everything here is for a developer machine or CI runner: the PostgreSQL
# clusters use trust authentication on 127.0.0.1 and a private unix socket,
# and the SoftHSM token keeps its PIN in a 0600 file. None of it is a
# production deployment.

# PSTD_ROOT is the repository root (this file lives in deploy/dev/).
# shellcheck disable=SC2034 # used by the scripts that source this file
PSTD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"

pstd_log() { printf '%s: %s\n' "${PSTD_SCRIPT:-pstd}" "$*" >&2; }
pstd_die() { pstd_log "error: $*"; exit 1; }

# pstd_abspath PATH: absolute form of PATH (need not exist), without
# resolving symlinks in the last component.
pstd_abspath() {
	case "$1" in
	/*) printf '%s\n' "$1" ;;
	*) printf '%s/%s\n' "$(pwd -P)" "$1" ;;
	esac
}

# pstd_sudo CMD...: run CMD as root (directly when we are root).
pstd_sudo() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo -n "$@"
	else
		pstd_die "need root (or passwordless sudo) to run: $*"
	fi
}

# pstd_apt_install PKG...: install the packages that are not installed yet.
# `apt-get update` runs only when something is missing, and only once.
pstd_apt_install() {
	local missing=() p
	for p in "$@"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
			missing+=("$p")
		fi
	done
	((${#missing[@]})) || return 0
	pstd_log "installing Debian packages: ${missing[*]}"
	pstd_sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
	pstd_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		"${missing[@]}" </dev/null
}

# pstd_pg_bindir: directory holding initdb, pg_ctl, postgres and psql.
# Prefers `pg_config --bindir`, then the newest /usr/lib/postgresql/*/bin
# (15 on Debian 12). Never /usr/local/bin, which may hold wrappers.
pstd_pg_bindir() {
	local d
	if command -v pg_config >/dev/null 2>&1; then
		d="$(pg_config --bindir 2>/dev/null || true)"
		if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
			printf '%s\n' "$d"
			return 0
		fi
	fi
	while read -r d; do
		if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
			printf '%s\n' "$d"
			return 0
		fi
	done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5 -rV)
	return 1
}

# pstd_pg_user: the account that owns and runs the clusters. PostgreSQL
# refuses to run as root, so as root we use the `postgres` account that the
# Debian package creates; as anyone else we run as ourselves.
pstd_pg_user() {
	if [[ $(id -u) -eq 0 ]]; then echo postgres; else id -un; fi
}

# pstd_as_pg CMD...: run CMD as the cluster owner, from / so that a
# current directory the postgres account cannot read causes no warnings.
pstd_as_pg() {
	if [[ $(id -u) -eq 0 ]]; then
		(cd / && runuser -u postgres -- "$@")
	else
		(cd / && "$@")
	fi
}

# pstd_pg_can_reach DIR: can the cluster owner traverse into DIR?
pstd_pg_can_reach() {
	pstd_as_pg test -x "$1" 2>/dev/null
}

# pstd_export NAME VALUE: an `export NAME='VALUE'` line for an env file that
# shells source (`set -a; . FILE; set +a`). Single quotes keep URLs with `?`
# and `&` readable and literal.
pstd_export() {
	local q="'\\''"
	printf "export %s='%s'\n" "$1" "${2//\'/$q}"
}

# pstd_random_hex N: 2N random hex digits.
pstd_random_hex() {
	head -c "$1" /dev/urandom | od -An -v -tx1 | tr -d ' \n'
}

# pstd_port_in_use PORT: is something listening on 127.0.0.1:PORT?
pstd_port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pstd_free_port: a random TCP port on 127.0.0.1 that nothing listens on.
# (Racy by nature; callers retry if the server then fails to bind.)
pstd_free_port() {
	local p _
	for _ in $(seq 1 50); do
		p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
		if ! pstd_port_in_use "$p"; then
			echo "$p"
			return 0
		fi
	done
	pstd_die "no free TCP port found"
}

# pstd_elapsed START_NS: seconds since START_NS (from `date +%s%N`), 1 decimal.
pstd_elapsed() {
	local now ms
	now=$(date +%s%N)
	ms=$(((now - $1) / 1000000))
	printf '%d.%ds' $((ms / 1000)) $(((ms % 1000) / 100))
}
