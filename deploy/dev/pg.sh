#!/usr/bin/env bash
# pg.sh start|stop|status DIR [PORT] [--throwaway]
#
# A private PostgreSQL cluster for development or tests, kept entirely in DIR:
#   DIR/data          the cluster (PGDATA), initdb'd on first start
#   DIR/postgres.log  server log
#   DIR/.s.PGSQL.PORT the unix socket
# It listens on 127.0.0.1:PORT and on that socket only, with the superuser
# `postgres`.
#
# DEVELOPMENT/TEST ONLY: authentication is `trust` (no password) for the
# socket and for 127.0.0.1, so any local user can connect as superuser.
# --throwaway additionally turns fsync, synchronous_commit and
# full_page_writes off: fast, and a crash loses the cluster. Use it only for
# test clusters that are deleted afterwards (deploy/dev/testenv.sh).
#
# PostgreSQL refuses to run as root, so as root the cluster is owned and run
# by the `postgres` account (runuser). That account must be able to traverse
# every directory above DIR. When it cannot (e.g. the checkout is under
# /root, mode 0700), the cluster is created in /var/tmp/pstd-pg-<hash of
# DIR> instead and DIR becomes a symlink to it.
#
# Idempotent: start on a running cluster with the same settings does
# nothing; with a changed PORT it restarts. stop on a stopped cluster
# does nothing. status exits 0 when running, 3 when not.
set -euo pipefail
PSTD_SCRIPT=pg.sh
# shellcheck source=deploy/dev/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { echo "usage: $0 start|stop|status DIR [PORT] [--throwaway]" >&2; exit 2; }

(($# >= 2)) || usage
cmd=$1
dir=$(pstd_abspath "$2")
port=${3:-}
throwaway=0
if [[ ${4:-} == --throwaway || ${3:-} == --throwaway ]]; then
	throwaway=1
	[[ $port == --throwaway ]] && port=
fi

bindir=$(pstd_pg_bindir) || pstd_die "PostgreSQL server binaries not found (run deploy/dev/deps.sh)"
pguser=$(pstd_pg_user)

# resolve_dir: make sure DIR exists (or is a symlink to a reachable
# directory) and set real to the physical path the server will use.
resolve_dir() {
	if [[ -L $dir ]]; then
		real=$(readlink -m "$dir")
		mkdir -p "$real"
	elif [[ -d $dir ]]; then
		real=$(cd "$dir" && pwd -P)
	else
		local parent
		parent=$(dirname "$dir")
		mkdir -p "$parent"
		if pstd_pg_can_reach "$parent"; then
			mkdir "$dir"
			real=$(cd "$dir" && pwd -P)
		else
			real=/var/tmp/pstd-pg-$(printf '%s' "$dir" | sha256sum | cut -c1-12)
			pstd_log "user $pguser cannot traverse $parent; putting the cluster in $real (symlinked from $dir)"
			mkdir -p "$real"
			ln -sfn "$real" "$dir"
		fi
	fi
	if [[ $(id -u) -eq 0 ]]; then
		chown "$pguser:" "$real"
	fi
	chmod 0700 "$real"
	pstd_pg_can_reach "$real" ||
		pstd_die "user $pguser cannot reach $real; make its parent directories traversable (chmod o+x) or remove $dir so it is recreated under /var/tmp"
}

data() { printf '%s/data' "$real"; }

running() {
	[[ -f $(data)/PG_VERSION ]] && pstd_as_pg "$bindir/pg_ctl" status -D "$(data)" >/dev/null 2>&1
}

running_port() {
	sed -n 4p "$(data)/postmaster.pid" 2>/dev/null || true
}

do_start() {
	[[ $port =~ ^[0-9]+$ ]] || usage
	resolve_dir
	local sock="$real/.s.PGSQL.$port"
	# sun_path is 108 bytes including the terminating NUL.
	((${#sock} < 108)) || pstd_die "unix socket path too long (${#sock} bytes): $sock; use a shorter DIR"

	if [[ ! -f $(data)/PG_VERSION ]]; then
		rm -rf "$(data)" # a half-made cluster from an interrupted initdb
		local extra=()
		((throwaway)) && extra+=(--no-sync)
		pstd_log "initdb $(data)"
		if ! pstd_as_pg "$bindir/initdb" -D "$(data)" -U postgres -A trust -E UTF8 --no-locale \
			--no-instructions "${extra[@]}" >"$real/initdb.log" 2>&1; then
			cat "$real/initdb.log" >&2
			pstd_die "initdb failed"
		fi
		echo "include_if_exists = 'pstd.conf'" | pstd_as_pg tee -a "$(data)/postgresql.conf" >/dev/null
		pstd_as_pg tee "$(data)/pg_hba.conf" >/dev/null <<-HBA
			# Written by pstd deploy/dev/pg.sh. DEVELOPMENT/TEST ONLY:
			# no passwords. The socket directory is mode 0700; TCP is loopback only.
			local all all              trust
			host  all all 127.0.0.1/32 trust
		HBA
	fi

	local conf
	conf=$(
		echo "# Written by pstd deploy/dev/pg.sh on every start; edits are lost. DEVELOPMENT/TEST ONLY."
		echo "listen_addresses = '127.0.0.1'"
		echo "port = $port"
		echo "unix_socket_directories = '$real'"
		echo "max_connections = 200"
		echo "log_min_messages = warning"
		if ((throwaway)); then
			echo "# throwaway test cluster: durability off"
			echo "fsync = off"
			echo "synchronous_commit = off"
			echo "full_page_writes = off"
		fi
	)
	local changed=0
	if [[ ! -f $(data)/pstd.conf ]] || [[ $(cat "$(data)/pstd.conf") != "$conf" ]]; then
		printf '%s\n' "$conf" | pstd_as_pg tee "$(data)/pstd.conf" >/dev/null
		changed=1
	fi

	if running; then
		if ((changed == 0)) && [[ $(running_port) == "$port" ]]; then
			pstd_log "already running on 127.0.0.1:$port ($dir)"
			return 0
		fi
		pstd_log "settings changed; restarting"
		pstd_as_pg "$bindir/pg_ctl" stop -D "$(data)" -m fast -w -s
	fi

	if pstd_port_in_use "$port"; then
		pstd_die "something already listens on 127.0.0.1:$port (set another port)"
	fi
	if ! pstd_as_pg "$bindir/pg_ctl" start -D "$(data)" -l "$real/postgres.log" -w -t 60 -s >/dev/null 2>&1; then
		tail -n 20 "$real/postgres.log" >&2 || true
		pstd_die "PostgreSQL failed to start (log: $real/postgres.log)"
	fi
	pstd_log "running on 127.0.0.1:$port, socket in $real"
}

do_stop() {
	if [[ ! -e $dir ]]; then
		return 0
	fi
	real=$(readlink -m "$dir")
	if running; then
		pstd_as_pg "$bindir/pg_ctl" stop -D "$(data)" -m fast -w -s
		pstd_log "stopped ($dir)"
	fi
}

do_status() {
	real=$(readlink -m "$dir")
	if running; then
		echo "running on 127.0.0.1:$(running_port), socket in $real, data $(data)"
		return 0
	fi
	echo "not running ($dir)"
	return 3
}

case $cmd in
start) do_start ;;
stop) do_stop ;;
status) do_status ;;
*) usage ;;
esac
