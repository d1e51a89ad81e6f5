#!/usr/bin/env bash
# Run the whole pipeline once on a fresh machine: installs uv if missing, syncs the workspace,
# starts (or finds) PostgreSQL and the Pub/Sub emulator, and checks that everything adds up.
# Options: --events N --orgs N. Exit code 0 when every check held.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh
"${UV[@]}" sync --locked --quiet
exec "${UV[@]}" run --locked python -m demo "$@"
