#!/usr/bin/env bash
# The README's Quick start as a newcomer meets it: its first command, word for word as README.md gives
# it, run in a fresh virtual environment at the project root; passes when the answer names Paris.
# CI (.ci/run) runs it on the clean clone before the tests, so a core install that lacks a package
# the command needs fails CI. Usage: bash scripts/quickstart.sh [VENV_DIR] (default: a temporary one).
set -euo pipefail
cd "$(dirname "$0")/.."
command=$(awk '/^## Quick start/ {on = 1} on && /^```bash$/ {grab = 1; next} grab && /^```$/ {exit} grab' README.md)
[ -n "$command" ] || { echo "quickstart: README.md has no bash block under '## Quick start'" >&2; exit 1; }
venv=${1:-$(mktemp -d)/venv}
python3 -m venv "$venv"
echo "quickstart: in a fresh venv ($venv): $command"
# shellcheck disable=SC1091
answer=$(. "$venv/bin/activate" && PIP_DISABLE_PIP_VERSION_CHECK=1 bash -euo pipefail -c "$command" 2>&1 | tail -n 20)
printf '%s\n' "$answer"
grep -q "Paris" <<<"$answer" || { echo "quickstart: FAILED, the answer does not name Paris" >&2; exit 1; }
echo "quickstart: passed"
