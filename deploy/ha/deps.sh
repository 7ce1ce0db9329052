#!/usr/bin/env bash
# deploy/ha/deps.sh: the Debian packages `make test-ha` needs on top of the
# development stack (deploy/dev/deps.sh), installed only if missing:
#   patroni      PostgreSQL high availability (3.0 on Debian 12; its etcd
#                client speaks the etcd v2 API)
#   python3-etcd Patroni's etcd backend
#   etcd-server  the distributed configuration store (3.4, run with --enable-v2)
#   etcd-client  etcdctl, for diagnosing a run by hand
#
# The test runs its own etcd and Patroni processes under a temporary
# directory (deploy/ha/cluster.sh); it needs no system service. A freshly
# installed package must not leave one running or enabled: the etcd-server
# package starts etcd on 127.0.0.1:2379 and the patroni package ships a
# unit. Service starts are refused during the install (policy-rc.d, the
# Debian mechanism for that), and afterwards the services that this run
# installed are stopped and disabled. A service that was installed before
# is the machine owner's and is left alone. Safe to run any number of times.
set -euo pipefail
PSTD_SCRIPT=ha-deps.sh
# shellcheck source=deploy/dev/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../dev/lib.sh"

pkgs=(patroni python3-etcd etcd-server etcd-client)

missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
if ((${#missing[@]} == 0)); then
	exit 0
fi

# policy-rc.d exit 101 means "action forbidden": invoke-rc.d and
# deb-systemd-invoke then start nothing. Put one in place only if the
# machine has none (containers usually have one already), and remove ours.
ours=
cleanup() {
	if [[ -n $ours ]]; then
		pstd_sudo rm -f /usr/sbin/policy-rc.d
	fi
}
trap cleanup EXIT
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
	printf '#!/bin/sh\n# written by pstd deploy/ha/deps.sh for the duration of an install\nexit 101\n' |
		pstd_sudo tee /usr/sbin/policy-rc.d >/dev/null
	pstd_sudo chmod 0755 /usr/sbin/policy-rc.d
	ours=1
fi

pstd_apt_install "${missing[@]}"

# Stop and disable what the packages just installed, under systemd or not.
# `systemctl disable` works without a running systemd too (it only removes
# the unit's links), so a machine that boots systemd later starts nothing.
for svc in etcd patroni; do
	if command -v systemctl >/dev/null 2>&1; then
		if [[ -d /run/systemd/system ]]; then
			pstd_sudo systemctl stop "$svc.service" >/dev/null 2>&1 || true
		fi
		pstd_sudo systemctl disable "$svc.service" >/dev/null 2>&1 || true
	fi
	if [[ -x /etc/init.d/$svc ]]; then
		if [[ ! -d /run/systemd/system ]]; then
			pstd_sudo /etc/init.d/"$svc" stop >/dev/null 2>&1 || true
		fi
		if command -v update-rc.d >/dev/null 2>&1; then
			pstd_sudo update-rc.d "$svc" disable >/dev/null 2>&1 || true
		fi
	fi
done
# Whatever the init system, no etcd started by the package may remain: its
# data directory is /var/lib/etcd/default (Debian's default).
# The package runs it as its own `etcd` account, which this project never
# uses, so only that account's processes are stopped, by process id.
if pids=$(pgrep -u etcd -x etcd 2>/dev/null); then
	pstd_log "stopping the etcd that the etcd-server package started (pid ${pids//$'\n'/ })"
	# shellcheck disable=SC2086 # one argument per pid
	pstd_sudo kill $pids || true
fi

for b in patroni etcd etcdctl; do
	command -v "$b" >/dev/null || pstd_die "$b still missing after installing ${missing[*]}"
done
pstd_log "installed ${missing[*]}; no etcd or patroni service left running or enabled"
