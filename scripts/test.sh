#!/usr/bin/env bash
# The test command: set-up, lint, then every test (unit, integration on the real broker,
# model and databases, and the slow model-quality test on the shared data when present).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/ensure-postgres.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check . >/dev/null || { echo "ruff format: run .venv/bin/ruff format ."; exit 1; }
echo "== import-linter (the layering: docs/architecture.md)"
.venv/bin/lint-imports --no-cache
echo "== pytest"
set +e
.venv/bin/python -m pytest --doctest-modules moodwire state stream learner retrieval dashboard tests \
  --ignore=moodwire/__main__.py --ignore=dashboard/views --ignore=state/migrations/env.py \
  -p no:cacheprovider "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then echo "pytest collected no test: that is a failure here" >&2; exit 1; fi
exit "$code"
