#!/usr/bin/env bash
# Installs the Debian packages the development and test stack needs, and only
# those that are missing: SoftHSM2 (PKCS#11 token for signer/hsm), PostgreSQL
# (db), Chromium (e2e). Non-interactive; `apt-get update` runs only when
# something has to be installed. Safe to run any number of times.
set -euo pipefail
PSTD_SCRIPT=deps.sh
# shellcheck source=deploy/dev/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

want=()

if ! command -v softhsm2-util >/dev/null 2>&1 || [[ ! -f /usr/lib/softhsm/libsofthsm2.so ]]; then
	want+=(softhsm2)
fi

pg_missing=0
if ! pstd_pg_bindir >/dev/null || ! command -v psql >/dev/null 2>&1; then
	pg_missing=1
	want+=(postgresql)
fi

if ! command -v chromium >/dev/null 2>&1; then
	want+=(chromium)
fi

if ((${#want[@]} == 0)); then
	exit 0
fi

if ((pg_missing)); then
	# We run our own clusters (deploy/dev/pg.sh); stop the package from
	# creating and starting a system-wide "main" cluster on port 5432.
	# postgresql-common reads this drop-in directory (createcluster.conf's
	# include_dir); the file is ours, not a package conffile.
	pstd_sudo mkdir -p /etc/postgresql-common/createcluster.d
	if [[ ! -e /etc/postgresql-common/createcluster.d/pstd-no-main-cluster.conf ]]; then
		printf '# written by pstd deploy/dev/deps.sh: pstd runs its own clusters\ncreate_main_cluster = false\n' |
			pstd_sudo tee /etc/postgresql-common/createcluster.d/pstd-no-main-cluster.conf >/dev/null
	fi
fi

pstd_apt_install "${want[@]}"

# Verify, so a half-installed machine fails here and not deep inside a test.
command -v softhsm2-util >/dev/null || pstd_die "softhsm2-util still missing"
[[ -f /usr/lib/softhsm/libsofthsm2.so ]] || pstd_die "/usr/lib/softhsm/libsofthsm2.so still missing"
pstd_pg_bindir >/dev/null || pstd_die "PostgreSQL server binaries still missing"
command -v chromium >/dev/null || pstd_die "chromium still missing"
