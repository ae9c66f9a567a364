#!/usr/bin/env bash
# One idempotent install step for a fresh Debian bookworm machine, run as root.
# Safe to run twice: every step checks before it changes anything.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${CILIATE_VENV:-$here/.venv}
log() { printf '[install] %s\n' "$*"; }

apt_pkgs=(python3-bpfcc bpfcc-tools linux-headers-amd64 iproute2 nftables
          containernetworking-plugins docker-compose curl procps psmisc kmod
          python3-venv util-linux)
# The compose demo's test runs its own Docker engine and builds its base image.
apt_pkgs+=(docker.io mmdebstrap)
# Cluster mode keeps shared state in etcd: the tests and `ciliate demo --nodes N`
# run Debian's etcd (3.4); etcdctl is there for people looking at the keys.
apt_pkgs+=(etcd-server etcd-client)
# The suite is also run with both cores busy (README, Tests): `stress-ng --cpu 2`.
apt_pkgs+=(stress-ng)
# The TLS server-name (serverNames) tests make throw-away certificates with it.
apt_pkgs+=(openssl)
# The DNS proxy's tests resolve through a real DNS server on loopback.
apt_pkgs+=(dnsmasq-base)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The Kubernetes tests drive the API with kubectl. Debian's kubernetes-client
# would collide with a kubectl some images already ship (Google Cloud's
# package owns /usr/bin/kubectl), so install it only when there is none.
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if ((${#missing[@]})); then
  log "apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc compiles against kernel headers at run time. This kernel ships none, so
# use Debian's headers: newest installed linux-headers-*-amd64 tree.
kver=$(uname -r)
# Debian splits a header package in two: the arch tree (generated headers,
# "build") and the common tree (the sources, "source"); bcc needs both.
hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
[ -n "$hdr" ] || { echo "no linux-headers-*-amd64 under /usr/src" >&2; exit 1; }
common=${hdr%-amd64}-common
[ -d "$common" ] || common=$hdr
relink() { # relink TARGET LINK
  [ "$(readlink "$2" 2>/dev/null || true)" = "$1" ] && return 0
  if [ -e "$2" ] && [ ! -L "$2" ]; then echo "$2 exists and is not a link; leaving it" >&2; return 0; fi
  ln -sfn "$1" "$2"; log "linked $2 -> $1"
}
mkdir -p "/lib/modules/$kver"
relink "$hdr" "/lib/modules/$kver/build"
relink "$common" "/lib/modules/$kver/source"
relink "$common" /source

if ! mountpoint -q /sys/fs/bpf; then
  mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf && log "mounted bpffs"
fi

py=${PYTHON:-python3.11}
command -v "$py" >/dev/null || py=python3
if [ ! -x "$venv/bin/python" ]; then
  log "creating virtualenv $venv"
  "$py" -m venv "$venv"
fi
stamp="$venv/.deps-stamp"
want=$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  log "python dependencies"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1
  "$venv/bin/pip" install -q -e "$here[dev]" 2> >(grep -v "WARNING: Location" >&2)
  echo "$want" > "$stamp"
fi

# bcc's Python binding is Debian's (it must match libbcc); make only that
# package visible to the venv, not all of Debian's dist-packages.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -e "$site/bcc" ]; then
  ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
fi
"$venv/bin/python" -c 'import bcc, envoy, grpclib, pyroute2' || { echo "import check failed" >&2; exit 1; }
# The project's bytecode, written now: where PYTHONDONTWRITEBYTECODE is set
# (some CI images and containers) every `ciliate` run would otherwise compile
# its modules again (policy trace: ~0.4 s instead of ~0.25 s).
"$venv/bin/python" -m compileall -q -j 0 "$here/policy" "$here/xds" "$here/redirect" "$here/sidecar" "$here/agent" "$here/demo" "$here/kvstore" "$here/dnsproxy" >/dev/null
log "ok: $venv"
