#!/usr/bin/env bash
# Run on the CPU machine before device calls of scripts/gpu_check.sh. Puts into the project root, all
# git-ignored (.git/info/exclude), what the device machine lacks:
#   .whl/              pydantic and its parts (../shared/device/fetch-wheels.sh), and the server stack for
#                      the 'serve' stage (fastapi, uvicorn, httpx), gguf for the 'quality' stage; the
#                      preamble installs them all
#   .smol-a/, .smol-b/ the embedded SmolLM2 GGUF for the 'quality' stage, in two halves: with the rest it
#                      is larger than one call may carry (64 MiB), so one call carries .smol-a and the next,
#                      on the still-warm machine, .smol-b (naming only one keeps the other there)
#   .ab/REV/           source trees of the commits the 'tp1' stage compares (git archive)
#   .tok/              the embedded model's tokenizer (from its GGUF), for the 'structured' stage
# and prints the device command (the `run` tool's command is one line).
# --no-wheels skips the downloads (the part that needs the package index): tests/scripts runs the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=1
[ "${1:-}" = "--no-wheels" ] && wheels=0
TP1_REVS=(300ebbe 074673a)  # the last commit before tensor parallelism, and the one that added it
for path in /.whl/ /.smol-a/ /.smol-b/ /.ab/ /.tok/; do
  grep -qx "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude
done
if [ $wheels = 1 ]; then
  bash ../shared/device/fetch-wheels.sh > /dev/null
  python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl 'fastapi>=0.110' 'uvicorn>=0.29' httpx gguf py-spy  # httpx: serve.py's client; py-spy: its profile
fi
gguf=$(python3 -c "from minivllm import default_model; print(default_model())")
half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
rm -rf .smol-a .smol-b && mkdir -p .smol-a .smol-b
rm -rf .tok && python3 -c "from minivllm.core.loading.gguf_file import GGUFFile
GGUFFile('$gguf').tokenizer().save_pretrained('.tok')" > /dev/null
head -c "$half" "$gguf" > .smol-a/part && tail -c +"$((half + 1))" "$gguf" > .smol-b/part
for rev in "${TP1_REVS[@]}"; do
  rm -rf ".ab/$rev" && mkdir -p ".ab/$rev" && git archive "$rev" | tar -x -C ".ab/$rev"
done
du -sh .smol-a .smol-b .ab .tok $([ -d .whl ] && echo .whl)
cat <<EOF
Device call (carry [".whl", ".ab", ".smol-a", ".tok"], then [".whl", ".smol-b"] for 'quality'), stages as needed:
$(cat ../shared/device/preamble.txt) MINIVLLM_COMMIT=$(git rev-parse --short HEAD) bash scripts/gpu_check.sh tests pipeline
EOF
