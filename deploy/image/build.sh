#!/usr/bin/env bash
# deploy/image/build.sh TAG — the pstd container image, FROM scratch, with no
# registry (`make image` runs it as deploy/image/build.sh localhost/pstd:VERSION).
#
# The root filesystem is built here, file by file:
#   - pstd and pstctl, built with cgo (they dlopen the PKCS#11 module);
#   - the Debian packages in $packages, unpacked with dpkg-deb -x (no
#     maintainer scripts run; nothing else from Debian is installed): glibc
#     for the binaries, libgcc/libstdc++/libssl3 because PKCS#11 modules are
#     C/C++ libraries that commonly link them (SoftHSM2 does);
#   - the CA bundle from ca-certificates, /etc/passwd and /etc/group with the
#     non-root user pstd (uid/gid 65532), nsswitch.conf, ld.so.cache, /tmp.
# buildah commits it as one layer with USER 65532:65532 and ENTRYPOINT
# /usr/bin/pstd, CMD serve.
#
# The .debs come from this machine's apt sources (the same release the
# binaries are linked against) via `apt-get download`, checked against the
# SHA-256 in the apt index, and are kept in deploy/image/.cache/ (gitignored;
# PSTD_IMAGE_CACHE overrides) so a rebuild downloads nothing.
#
# Needs root (buildah's storage in /var/lib/containers), buildah, dpkg-deb,
# apt-get, go. Environment: GO (default go), PSTD_VERSION (default: git
# describe), CONTAINERS_CONF (default: deploy/image/containers.conf).
set -euo pipefail
PSTD_SCRIPT=image/build.sh
# shellcheck source=deploy/dev/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../dev/lib.sh"
t0=$(date +%s%N)

(($# == 1)) || { echo "usage: $0 TAG (e.g. localhost/pstd:1.0.0)" >&2; exit 2; }
tag=$1
GO=${GO:-go}
cache=${PSTD_IMAGE_CACHE:-$PSTD_ROOT/deploy/image/.cache}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PSTD_ROOT/deploy/image/containers.conf}
cd "$PSTD_ROOT"
version=${PSTD_VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo unknown)}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)

packages=(libc6 libgcc-s1 libstdc++6 libssl3 ca-certificates)
uid=65532

for c in buildah dpkg-deb apt-get "$GO"; do
	command -v "$c" >/dev/null || pstd_die "$c not found (deploy/dev/deps.sh installs buildah)"
done
[[ $(id -u) -eq 0 ]] || pstd_die "run as root (buildah's image store is /var/lib/containers)"

work=$(mktemp -d "${TMPDIR:-/tmp}/pstd-image.XXXXXX")
ctr=
cleanup() {
	local rc=$?
	[[ -n $ctr ]] && buildah rm "$ctr" >/dev/null 2>&1
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs" "$cache"

# apt_update: once per build, when the package lists are missing (a fresh
# machine) or stale (the mirror has moved on to a newer version).
updated=0
apt_update() {
	((updated == 0)) || return 1
	updated=1
	pstd_log "apt-get update"
	env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2
}

# fetch_deb PKG: the candidate version of PKG as a verified .deb in the
# cache; sets deb to its path. (Not in a subshell: apt_update runs once.)
fetch_deb() {
	local p=$1 out file sum dl
	while :; do
		if out=$(apt-get download --print-uris "$p" 2>/dev/null) && [[ -n $out ]]; then
			read -r _ file _ sum <<<"$out"
			sum=${sum#SHA256:}
			[[ $file == *.deb && ${#sum} -eq 64 ]] || pstd_die "unexpected apt answer for $p: $out"
			deb=$cache/$file
			if [[ -f $deb ]] && echo "$sum  $deb" | sha256sum -c --quiet - >/dev/null 2>&1; then
				return 0
			fi
			pstd_log "downloading $file"
			dl=$(mktemp -d "$cache/dl.XXXXXX")
			# Download as root into this root-only directory rather than as
			# apt's sandbox user, which could not write it.
			if (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$p" </dev/null >&2) &&
				echo "$sum  $dl/$file" | sha256sum -c --quiet - >&2; then
				mv "$dl/$file" "$deb"
				rm -rf "$dl"
				return 0
			fi
			rm -rf "$dl"
		fi
		apt_update || pstd_die "cannot download $p with apt (or it does not match the SHA-256 in the apt index)"
	done
}

for p in "${packages[@]}"; do
	fetch_deb "$p"
	dpkg-deb -x "$deb" "$rootfs"
done

# Merged /usr, as on Debian 12 hosts: the packages above still ship files
# under /lib and /lib64.
for d in bin sbin lib lib64; do
	if [[ -d $rootfs/$d && ! -L $rootfs/$d ]]; then
		mkdir -p "$rootfs/usr/$d"
		cp -a "$rootfs/$d/." "$rootfs/usr/$d/"
		rm -rf "${rootfs:?}/$d"
	fi
	mkdir -p "$rootfs/usr/$d"
	ln -s "usr/$d" "$rootfs/$d"
done

# What update-ca-certificates would write with every certificate enabled;
# the certificates themselves are kept only in the bundle.
mkdir -p "$rootfs/etc/ssl/certs"
find "$rootfs/usr/share/ca-certificates" -name '*.crt' -type f -print0 | sort -z |
	xargs -0 cat >"$rootfs/etc/ssl/certs/ca-certificates.crt"
[[ -s $rootfs/etc/ssl/certs/ca-certificates.crt ]] || pstd_die "empty CA bundle"
# Nothing in the image reads documentation, locales or the CA tooling.
rm -rf "$rootfs"/usr/share/{doc,man,info,lintian,locale,ca-certificates} \
	"$rootfs"/usr/sbin/update-ca-certificates "$rootfs"/etc/ca-certificates.conf

cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/usr/sbin/nologin
pstd:x:$uid:$uid:pstd:/nonexistent:/usr/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<EOF
root:x:0:
pstd:x:$uid:
EOF
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
printf 'include /etc/ld.so.conf.d/*.conf\n' >"$rootfs/etc/ld.so.conf"
mkdir -p "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"

pstd_log "building pstd and pstctl $version"
# -buildvcs=auto: record the commit (pstd --version, pstd_build_info) when
# git can tell it, whatever GOFLAGS says.
CGO_ENABLED=1 "$GO" build -trimpath -buildvcs=auto -ldflags "-s -w" \
	-o "$rootfs/usr/bin/" ./cmd/pstd ./cmd/pstctl
ldconfig -r "$rootfs"

# Every library the binaries need must resolve inside the image.
interp=
for f in "$rootfs"/usr/lib64/ld-linux*.so.* "$rootfs"/usr/lib/ld-linux*.so.*; do
	[[ -e $f ]] && { interp=${f#"$rootfs"}; break; }
done
[[ -n $interp ]] || pstd_die "no dynamic loader in the image"
for b in pstd pstctl; do
	if ! chroot "$rootfs" "$interp" --list "/usr/bin/$b" >"$work/ldd" 2>&1 ||
		grep -q 'not found' "$work/ldd"; then
		cat "$work/ldd" >&2
		pstd_die "$b: unresolved shared libraries in the image"
	fi
done

ctr=$(buildah from --quiet scratch)
buildah copy --quiet "$ctr" "$rootfs" / >/dev/null
buildah config \
	--user "$uid:$uid" \
	--workingdir / \
	--entrypoint '["/usr/bin/pstd"]' \
	--cmd '["serve"]' \
	--env PSTD_LISTEN=0.0.0.0:8480 \
	--port 8480 \
	--label org.opencontainers.image.title=pstd \
	--label "org.opencontainers.image.description=pstd, a Private State Token issuer" \
	--label "org.opencontainers.image.version=$version" \
	--label "org.opencontainers.image.revision=$revision" \
	"$ctr"
buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
ctr=

pstd_log "built $tag in $(pstd_elapsed "$t0")"
echo "$tag"
