#!/usr/bin/env bash
# Run on the CPU machine before device calls of scripts/gpu_check.sh. Puts into the project root, all
# git-ignored (.git/info/exclude), what the device machine lacks:
#   .whl/    pydantic and its parts (../shared/device/fetch-wheels.sh); the preamble installs them
#   .smol/   the embedded SmolLM2 GGUF for the 'quality' stage, in two halves (part-aa, part-ab): with the
#            rest of the tree it is larger than one call may carry (64 MiB), so one call carries a half
#            and the next, on the still-warm machine, the other
# and prints the device command (carry ".whl", and ".smol/part-aa" or ".smol/part-ab"; one line).
set -euo pipefail
cd "$(dirname "$0")/.."
for path in /.whl/ /.smol/; do
  grep -qx "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude
done
bash ../shared/device/fetch-wheels.sh > /dev/null
gguf=$(python3 -c "from minivllm.cli import default_model; print(default_model())")
rm -rf .smol && mkdir -p .smol && split -n 2 "$gguf" .smol/part-
du -sh .whl .smol/*
cat <<EOF
Device call (carry [".whl", ".smol/part-aa"], then [".whl", ".smol/part-ab"] for 'quality'), stages as needed:
$(cat ../shared/device/preamble.txt) MINIVLLM_COMMIT=$(git rev-parse --short HEAD) bash scripts/gpu_check.sh tests pipeline
EOF
