#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded default:
# local filesystem as object store, the offline encoder, the project's own example documents.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m flows.main "$@"
