#!/usr/bin/env bash
# Configure Podman for this kind of machine: runc (crun fails on hybrid cgroups here) and default
# ulimits within the machine's hard limits. Idempotent.
set -euo pipefail
command -v podman >/dev/null || { apt-get update -qq && apt-get install -y -qq podman runc busybox-static >/dev/null; }
mkdir -p /etc/containers
conf=/etc/containers/containers.conf
if ! grep -q 'runtime = "runc"' "$conf" 2>/dev/null; then
  cat > "$conf" <<'CONF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"
CONF
fi
