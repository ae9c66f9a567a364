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
exec ciliate agent "$@"
