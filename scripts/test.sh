#!/usr/bin/env bash
# Run the test suite on a fresh machine: installs uv if missing, syncs the workspace, runs pytest.
# Services: TEST_DATABASE_URL / PUBSUB_EMULATOR_HOST if set, else testcontainers where Docker
# answers, else an embedded PostgreSQL and the installed Google Cloud SDK Pub/Sub emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv.sh
"${UV[@]}" sync --locked --quiet
exec "${UV[@]}" run --locked pytest "$@"
