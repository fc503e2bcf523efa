#!/usr/bin/env bash
# Installs the console's and explorers' browser packages from the npm registry, exactly as pinned
# by console/package-lock.json, and copies the files Dockyard serves into app/console/dist (git
# ignored; DOCKYARD_CONSOLE_DIR may point elsewhere). Needs Node.js >= 18 and npm (Debian 12:
# apt-get install nodejs npm). --ignore-scripts: no package may run code at install time.
set -euo pipefail
cd "$(dirname "$0")/../console"
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
node build.mjs
