#!/bin/sh
# The agent container's entrypoint: its own bpffs, then the agent.
# The agent runs in a network namespace of its own (the demo's "node"), and
# pins its maps in a bpffs mounted in its own mount namespace: both vanish
# with the container, so `docker compose down` leaves the host's network
# and /sys/fs/bpf as they were.
set -eu
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi
# The node runs both families: IPv6 on (Docker turns it off in containers
# without an IPv6 network) and forwarded between the apps' veths.
# (The image has no procps: the files themselves.)
if [ -w /proc/sys/net/ipv6/conf/all/disable_ipv6 ]; then
  echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6
  echo 0 > /proc/sys/net/ipv6/conf/default/disable_ipv6
  echo 1 > /proc/sys/net/ipv6/conf/all/forwarding
else
  echo "IPv6 unavailable: the demo runs IPv4 only" >&2
fi
exec ciliate agent "$@"
