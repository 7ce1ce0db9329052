#!/usr/bin/env bash
# deploy/ha/cluster.sh start DIR | stop DIR | status DIR
#
# A three-node PostgreSQL cluster under Patroni with one etcd, all in DIR,
# for `make test-ha` (deploy/ha/test.sh). Nothing is installed as a service
# and nothing listens on a fixed port: every port is a free one on 127.0.0.1.
#
#   DIR/etcd/           etcd 3.4 (v2 API enabled: Patroni 3.0 speaks v2), pid, log
#   DIR/pgN/patroni.yml Patroni's configuration of node pgN (N = 0, 1, 2)
#   DIR/pgN/data        its PostgreSQL data directory (owned by `postgres`)
#   DIR/pgN/patroni.log Patroni's log (PostgreSQL's goes to DIR/pgN/data/log)
#   DIR/env             PSTD_TEST_HA_DATABASE_URL (multi-host, read-write),
#                       PSTD_TEST_HA_PATRONI (REST API base URLs), PSTD_TEST_HA_DIR
#
# The settings that matter for pstd (no acknowledged redemption lost by a
# failover) are in the bootstrap.dcs block below and explained in
# docs/HA.md. DEVELOPMENT/TEST ONLY otherwise: trust authentication on
# loopback, one etcd member, no TLS.
#
# start waits until there is a leader, a synchronous standby and a third
# streaming replica, and creates the database `pstd`. stop ends every
# process it started (by the pids it recorded, then any postmaster left in
# its data directories) and deletes DIR if start made it.
set -euo pipefail
PSTD_SCRIPT=ha-cluster.sh
# shellcheck source=deploy/dev/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../dev/lib.sh"

usage() { echo "usage: $0 start DIR | stop DIR | status DIR" >&2; exit 2; }
(($# == 2)) || usage
cmd=$1
dir=$(pstd_abspath "$2")
nodes=(pg0 pg1 pg2)

bindir=$(pstd_pg_bindir) || pstd_die "PostgreSQL server binaries not found (run deploy/dev/deps.sh)"
pguser=$(pstd_pg_user)

# cluster_json URL...: Patroni's /cluster document from the first REST API
# that answers, on stdout.
cluster_json() {
	python3 - "$@" <<-'PY'
		import sys, urllib.request
		for base in sys.argv[1:]:
		    try:
		        with urllib.request.urlopen(base + "/cluster", timeout=2) as r:
		            sys.stdout.write(r.read().decode())
		            sys.exit(0)
		    except Exception:
		        pass
		sys.exit(1)
	PY
}

# healthy: leader running, one sync_standby and one replica streaming, none
# lagging. Prints the leader's PostgreSQL port.
healthy() {
	python3 -c '
import json, sys
c = json.load(sys.stdin)
m = c.get("members", [])
leader = [x for x in m if x.get("role") == "leader" and x.get("state") == "running"]
sync = [x for x in m if x.get("role") == "sync_standby" and x.get("state") in ("running", "streaming")]
repl = [x for x in m if x.get("role") == "replica" and x.get("state") in ("running", "streaming")]
ok = len(leader) == 1 and len(sync) == 1 and len(repl) == 1 and all(x.get("lag", 0) in (0, "0") for x in sync + repl)
if not ok:
    sys.exit(1)
print(leader[0]["port"])
'
}

api_urls() {
	local n urls=()
	for n in "${nodes[@]}"; do
		urls+=("http://127.0.0.1:$(cat "$dir/$n/restapi.port")")
	done
	echo "${urls[@]}"
}

write_patroni_yml() { # NODE PGPORT APIPORT ETCDPORT SCOPE
	local n=$1 pgport=$2 apiport=$3 etcdport=$4 scope=$5
	cat <<-YML
		# Written by deploy/ha/cluster.sh. DEVELOPMENT/TEST ONLY (trust auth on
		# loopback). The dcs block is what docs/HA.md explains.
		scope: $scope
		namespace: /pstd-ha/
		name: $n
		log:
		  level: INFO
		restapi:
		  listen: 127.0.0.1:$apiport
		  connect_address: 127.0.0.1:$apiport
		etcd:
		  host: 127.0.0.1:$etcdport
		  protocol: http
		bootstrap:
		  dcs:
		    # Failure detection: the leader key lives ttl seconds; Patroni runs
		    # its loop every loop_wait seconds. loop_wait + 2 * retry_timeout
		    # must stay within ttl.
		    ttl: 20
		    loop_wait: 2
		    retry_timeout: 5
		    # A crashed primary is failed over to the synchronous standby at
		    # once instead of being restarted in place.
		    primary_start_timeout: 0
		    # Only the synchronous standby may be promoted, and the primary
		    # accepts no commit that the standby has not flushed, even when
		    # no standby is left (strict).
		    synchronous_mode: true
		    synchronous_mode_strict: true
		    synchronous_node_count: 1
		    maximum_lag_on_failover: 1048576
		    check_timeline: true
		    postgresql:
		      use_pg_rewind: true
		      use_slots: true
		      parameters:
		        synchronous_commit: "on"
		        wal_level: replica
		        wal_log_hints: "on"
		        hot_standby: "on"
		        max_wal_senders: 10
		        max_replication_slots: 10
		        max_connections: 200
		        wal_keep_size: 256MB
		  initdb:
		    - encoding: UTF8
		    - no-locale
		postgresql:
		  listen: 127.0.0.1:$pgport
		  connect_address: 127.0.0.1:$pgport
		  data_dir: $dir/$n/data
		  bin_dir: $bindir
		  pgpass: $dir/$n/pgpass
		  authentication:
		    superuser:
		      username: postgres
		    replication:
		      username: replicator
		    rewind:
		      username: postgres
		  parameters:
		    unix_socket_directories: $dir/$n
		    logging_collector: "on"
		    log_min_messages: warning
		  pg_hba:
		    - local all all trust
		    - host all all 127.0.0.1/32 trust
		    - host replication replicator 127.0.0.1/32 trust
	YML
}

# start_daemon NAME PIDFILE LOG USER CMD...: CMD in the background as USER,
# detached from our terminal, its pid in PIDFILE.
start_daemon() {
	local pidfile=$1 log=$2 user=$3
	shift 3
	start-stop-daemon --start --background --make-pidfile --pidfile "$pidfile" \
		--chuid "$user" --chdir / --output "$log" --startas "$1" -- "${@:2}"
}

do_start() {
	[[ ! -e $dir/env ]] || pstd_die "$dir already holds a cluster (stop it first)"
	mkdir -p "$dir"
	chmod 0711 "$dir"
	touch "$dir/.pstd-ha"
	local scope
	scope=pstd-ha-$(pstd_random_hex 4)

	# Ports: etcd client and peer, then PostgreSQL and REST API per node. A
	# port taken between the choice and the bind makes start fail, and
	# test.sh retries with new ports.
	local used=" " p
	pick() {
		while :; do
			p=$(pstd_free_port)
			[[ $used == *" $p "* ]] || break
		done
		used+="$p "
	}
	pick; local etcd_client=$p
	pick; local etcd_peer=$p

	mkdir -p "$dir/etcd"
	start_daemon "$dir/etcd/pid" "$dir/etcd/etcd.log" root /usr/bin/etcd \
		--name pstd-ha --data-dir "$dir/etcd/data" \
		--listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
		--listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
		--initial-cluster "pstd-ha=http://127.0.0.1:$etcd_peer" --initial-cluster-state new \
		--enable-v2 --logger zap --log-level warn
	local deadline=$((SECONDS + 30))
	until pstd_port_in_use "$etcd_client"; do
		((SECONDS < deadline)) || { tail -n 20 "$dir/etcd/etcd.log" >&2; pstd_die "etcd did not start"; }
		sleep 0.2
	done
	pstd_log "etcd on 127.0.0.1:$etcd_client"

	local n hosts=()
	for n in "${nodes[@]}"; do
		mkdir -p "$dir/$n"
		pick; echo "$p" >"$dir/$n/postgres.port"
		hosts+=("127.0.0.1:$p")
		pick; echo "$p" >"$dir/$n/restapi.port"
		write_patroni_yml "$n" "$(cat "$dir/$n/postgres.port")" "$p" "$etcd_client" "$scope" >"$dir/$n/patroni.yml"
		chown -R "$pguser:" "$dir/$n"
		chmod 0700 "$dir/$n"
	done
	# The first node bootstraps (initdb) alone; the others then clone it
	# with pg_basebackup, which is quicker than racing for the initialize key.
	for n in "${nodes[@]}"; do
		start_daemon "$dir/$n/pid" "$dir/$n/patroni.log" "$pguser" /usr/bin/patroni "$dir/$n/patroni.yml"
		if [[ $n == pg0 ]]; then
			deadline=$((SECONDS + 90))
			until [[ $(cluster_json "http://127.0.0.1:$(cat "$dir/pg0/restapi.port")" 2>/dev/null |
				python3 -c 'import json,sys; print(any(m.get("role")=="leader" and m.get("state")=="running" for m in json.load(sys.stdin).get("members",[])))' 2>/dev/null) == True ]]; do
				((SECONDS < deadline)) || { tail -n 30 "$dir/pg0/patroni.log" >&2; pstd_die "pg0 did not bootstrap"; }
				sleep 0.5
			done
			pstd_log "pg0 bootstrapped the cluster"
		fi
	done

	local urls leader_port
	read -ra urls <<<"$(api_urls)"
	deadline=$((SECONDS + 120))
	until leader_port=$(cluster_json "${urls[@]}" 2>/dev/null | healthy 2>/dev/null); do
		if ((SECONDS >= deadline)); then
			cluster_json "${urls[@]}" >&2 || true
			for n in "${nodes[@]}"; do tail -n 20 "$dir/$n/patroni.log" >&2 || true; done
			pstd_die "no leader with a synchronous standby and a replica after 120 s"
		fi
		sleep 0.5
	done

	"$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$leader_port" -U postgres -d postgres \
		-c 'CREATE DATABASE pstd' >/dev/null
	local hostlist
	hostlist=$(
		IFS=,
		echo "${hosts[*]}"
	)
	{
		echo "# Written by deploy/ha/cluster.sh. Throwaway HA test cluster, DEVELOPMENT/TEST ONLY."
		pstd_export PSTD_TEST_HA_DATABASE_URL "postgres://postgres@$hostlist/pstd?sslmode=disable&target_session_attrs=read-write"
		pstd_export PSTD_TEST_HA_PATRONI "$(
			IFS=,
			echo "${urls[*]}"
		)"
		pstd_export PSTD_TEST_HA_DIR "$dir"
	} >"$dir/env"
	pstd_log "leader on 127.0.0.1:$leader_port; nodes ${hosts[*]}; REST ${urls[*]}"
}

# pid_alive PIDFILE: the recorded process is running. Only a plain pid
# above 1 counts: `kill 0` or `kill -1` would reach far more than ours.
pid_alive() {
	local pid
	pid=$(cat "$1" 2>/dev/null) || return 1
	[[ $pid =~ ^[1-9][0-9]*$ && $pid != 1 ]] && kill -0 "$pid" 2>/dev/null
}

do_stop() {
	[[ -d $dir ]] || return 0
	local n pf deadline
	# Patroni stops its PostgreSQL on SIGTERM; all three at once.
	for n in "${nodes[@]}"; do
		pf=$dir/$n/pid
		if pid_alive "$pf"; then kill -TERM "$(cat "$pf")" 2>/dev/null || true; fi
	done
	deadline=$((SECONDS + 40))
	for n in "${nodes[@]}"; do
		pf=$dir/$n/pid
		while pid_alive "$pf" && ((SECONDS < deadline)); do sleep 0.2; done
		if pid_alive "$pf"; then
			pstd_log "Patroni $n still running after 40 s; killing it"
			kill -KILL "$(cat "$pf")" 2>/dev/null || true
		fi
	done
	# Any postmaster left behind (a Patroni killed before it stopped it).
	for n in "${nodes[@]}"; do
		if [[ -f $dir/$n/data/postmaster.pid ]]; then
			pstd_as_pg "$bindir/pg_ctl" stop -D "$dir/$n/data" -m immediate -w -t 20 -s >/dev/null 2>&1 || true
		fi
	done
	# Backends orphaned by a postmaster that was killed (the failover test
	# kills one) can outlive it, stuck on a lock the dead processes held.
	# They are ours if their working directory is one of our data
	# directories (PostgreSQL runs in its data directory).
	local p cwd
	for p in /proc/[0-9]*; do
		cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
		case $cwd in
		"$dir"/pg[0-9]/data | "$dir"/pg[0-9]/data/* | "$dir"/pg[0-9]/data\ \(deleted\))
			pstd_log "killing orphaned PostgreSQL process ${p#/proc/} ($cwd)"
			kill -KILL "${p#/proc/}" 2>/dev/null || true
			;;
		esac
	done
	pf=$dir/etcd/pid
	if pid_alive "$pf"; then
		kill -TERM "$(cat "$pf")" 2>/dev/null || true
		deadline=$((SECONDS + 15))
		while pid_alive "$pf" && ((SECONDS < deadline)); do sleep 0.2; done
		if pid_alive "$pf"; then kill -KILL "$(cat "$pf")" 2>/dev/null || true; fi
	fi
	if [[ -f $dir/.pstd-ha ]]; then
		rm -rf "$dir"
	else
		pstd_log "$dir was not made by cluster.sh start; stopped the processes but left the directory"
	fi
}

do_status() {
	[[ -f $dir/env ]] || { echo "no cluster in $dir"; return 3; }
	local urls
	read -ra urls <<<"$(api_urls)"
	cluster_json "${urls[@]}" || { echo "no Patroni REST API answers"; return 3; }
	echo
}

case $cmd in
start) do_start ;;
stop) do_stop ;;
status) do_status ;;
*) usage ;;
esac
