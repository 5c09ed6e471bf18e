#!/usr/bin/env bash
# Run on the CPU machine before a device call of scripts/gpu_check.sh. Puts into the project root, all
# git-ignored (.git/info/exclude), what the device machine lacks:
#   .whl/     pydantic and its parts (../shared/device/fetch-wheels.sh), and the server stack for the
#             'serve' stage (fastapi, uvicorn, httpx and what they need); the preamble installs them all
#   .ab/REV/  source trees of the commits the 'tp1' stage compares (git archive)
# and prints the device command (carry both paths; the `run` tool's command is one line).
set -euo pipefail
cd "$(dirname "$0")/.."
TP1_REVS=(300ebbe 074673a)  # the last commit before tensor parallelism, and the one that added it
grep -qx /.ab/ .git/info/exclude 2>/dev/null || echo /.ab/ >> .git/info/exclude
bash ../shared/device/fetch-wheels.sh > /dev/null
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl 'fastapi>=0.110' 'uvicorn>=0.27' httpx  # httpx: benchmarks/serve.py's client
for rev in "${TP1_REVS[@]}"; do
  rm -rf ".ab/$rev" && mkdir -p ".ab/$rev" && git archive "$rev" | tar -x -C ".ab/$rev"
done
du -sh .whl .ab
cat <<EOF
Device call (carry [".whl", ".ab"]), stages as needed:
$(cat ../shared/device/preamble.txt) MINIVLLM_COMMIT=$(git rev-parse --short HEAD) bash scripts/gpu_check.sh tp1 serve ab attn
EOF
