#!/usr/bin/env bash
# Installs what the development and test stack needs, and only what is
# missing: Go (go.mod's version; Debian 12 ships 1.19), a C compiler (cgo,
# for the PKCS#11 binding and -race), SoftHSM2 (PKCS#11 token for
# signer/hsm), PostgreSQL (db), Chromium (e2e), podman/buildah/runc
# (deploy/image), systemd-analyze and mmdebstrap (deploy/systemd).
# Non-interactive; `apt-get update` runs only when something has to be
# installed. Safe to run any number of times.
set -euo pipefail
PSTD_SCRIPT=deps.sh
# shellcheck source=deploy/dev/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

want=()

# Go: the toolchain go.mod names, from the Go module proxy (the same place
# `go` itself fetches toolchains from), checked against a pinned SHA-256,
# installed under $PSTD_GO_PREFIX (default /usr/local) as go<version> with
# go and gofmt linked into $PSTD_GO_PREFIX/bin.
GO_WANT=1.26.8
declare -A GO_ZIP_SHA256=(
	[amd64]=30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7
)
go_prefix=${PSTD_GO_PREFIX:-/usr/local}

# go_ok BIN: BIN runs and is at least go.mod's minor version.
go_ok() {
	local v
	v=$("$1" env GOVERSION 2>/dev/null) || return 1
	v=${v#go}
	local major=${v%%.*} rest=${v#*.}
	local minor=${rest%%.*}
	[[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || return 1
	((major > 1 || (major == 1 && minor >= 26)))
}

need_go=0
if ! { command -v go >/dev/null 2>&1 && go_ok go; }; then
	need_go=1
	want+=(curl ca-certificates unzip)
fi
if ! command -v gcc >/dev/null 2>&1; then
	want+=(gcc libc6-dev)
fi

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

# The container image (deploy/image: buildah builds it, podman and runc run
# it in its test) and the systemd units (deploy/systemd: checked with
# systemd-analyze, and run under systemd in a podman container whose Debian
# root mmdebstrap makes).
if ! command -v podman >/dev/null 2>&1 || ! command -v buildah >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
	want+=(podman buildah runc)
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
	want+=(mmdebstrap)
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
	want+=(systemd)
fi

if ((${#want[@]} == 0)); then
	exit 0
fi

install_go() {
	local arch sum proxy url tmp dest
	arch=$(dpkg --print-architecture)
	sum=${GO_ZIP_SHA256[$arch]:-}
	[[ -n $sum ]] || pstd_die "no pinned Go $GO_WANT for $arch: install Go >= 1.26 from https://go.dev/dl/ and re-run"
	proxy=${GOPROXY:-https://proxy.golang.org}
	proxy=${proxy%%,*}
	[[ $proxy == http* ]] || proxy=https://proxy.golang.org
	url="$proxy/golang.org/toolchain/@v/v0.0.1-go$GO_WANT.linux-$arch.zip"
	tmp=$(mktemp -d)
	pstd_log "fetching Go $GO_WANT from $url"
	curl -fsSL --retry 3 -o "$tmp/go.zip" "$url" || pstd_die "downloading Go from $url failed"
	echo "$sum  $tmp/go.zip" | sha256sum -c --quiet - || pstd_die "Go $GO_WANT download does not match its pinned SHA-256"
	unzip -q "$tmp/go.zip" -d "$tmp/x"
	dest="$go_prefix/go$GO_WANT"
	pstd_sudo rm -rf "$dest"
	pstd_sudo mkdir -p "$go_prefix/bin"
	pstd_sudo mv "$tmp/x/golang.org/toolchain@v0.0.1-go$GO_WANT.linux-$arch" "$dest"
	# Module zips carry no file modes.
	pstd_sudo chmod -R a+rX "$dest"
	pstd_sudo chmod a+x "$dest"/bin/* "$dest"/pkg/tool/*/*
	pstd_sudo ln -sfn "$dest/bin/go" "$go_prefix/bin/go"
	pstd_sudo ln -sfn "$dest/bin/gofmt" "$go_prefix/bin/gofmt"
	rm -rf "$tmp"
	go_ok "$go_prefix/bin/go" || pstd_die "the installed Go at $dest does not run"
	pstd_log "installed Go $GO_WANT in $dest ($go_prefix/bin/go)"
}

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
if ((need_go)); then
	install_go
fi

# Verify, so a half-installed machine fails here and not deep inside a test.
command -v softhsm2-util >/dev/null || pstd_die "softhsm2-util still missing"
[[ -f /usr/lib/softhsm/libsofthsm2.so ]] || pstd_die "/usr/lib/softhsm/libsofthsm2.so still missing"
pstd_pg_bindir >/dev/null || pstd_die "PostgreSQL server binaries still missing"
command -v chromium >/dev/null || pstd_die "chromium still missing"
command -v gcc >/dev/null || pstd_die "gcc still missing (cgo)"
for c in podman buildah runc mmdebstrap systemd-analyze; do
	command -v "$c" >/dev/null || pstd_die "$c still missing"
done
