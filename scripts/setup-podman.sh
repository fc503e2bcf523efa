#!/usr/bin/env bash
# Prepare this machine to run the Docker-runtime tests against a local Podman engine.
#
# Idempotent: installs podman, runc and busybox-static from Debian when missing, and writes the
# engine configuration the tests need:
#   - runtime = "runc": crun fails to start containers on this kernel;
#   - default_ulimits lowered: Podman's defaults exceed the hard limits of the sandbox.
# Must run as root (CI and developer machines are root).
set -euo pipefail

missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ -x /bin/busybox ] && file_static=$(LC_ALL=C ldd /bin/busybox 2>&1 || true) || file_static="missing"
case "$file_static" in
  *"not a dynamic executable"*) ;;
  *) missing+=(busybox-static) ;;
esac

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup-podman: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

conf=/etc/containers/containers.conf
want='[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"'
mkdir -p /etc/containers
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
  if [ -f "$conf" ] && [ ! -f "$conf.dockyard-orig" ]; then
    cp "$conf" "$conf.dockyard-orig"
  fi
  printf '%s\n' "$want" >"$conf"
  echo "setup-podman: wrote $conf" >&2
fi

podman --version
