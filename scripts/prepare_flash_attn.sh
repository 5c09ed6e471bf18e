#!/usr/bin/env bash
# CPU side of the FlashAttention-3 build (issue 28): packs the sources that scripts/build_flash_attn.sh
# compiles on the device machine, which has nvcc but no network, into .fa-src/ (git-ignored through
# .git/info/exclude), and prints the device command.
#
#   .fa-src/fa3-src.tar.gz   hopper/ of Dao-AILab/flash-attention at FA_REV (FlashAttention-3: the Hopper
#                            kernels, its setup.py and flash_attn_interface.py; tests and benchmarks left
#                            out), README.md (setup.py reads it), and include/ of NVIDIA/cutlass at the
#                            commit FA_REV pins as its csrc/cutlass submodule, as csrc/cutlass/include.
#                            About 27 MB of headers, ~3 MB packed.
#
# Sources come from git: FA_GIT and CUTLASS_GIT name a clone or a bare git directory of each repository
# (e.g. `git clone --bare https://github.com/Dao-AILab/flash-attention`); unset, the mirrors this workplace
# keeps under /work/.mirror are used. The commit is pinned, so the packed tree is the same wherever it is made.
#
# Usage (in the repository root that the device call carries):  bash scripts/prepare_flash_attn.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FA_REV=${FA_REV:-0251105a2fb19d2957484b7f023cd8c115286ced}  # 2026-08-15, "[CuTe] Relax CUTLASS DSL requirement"
FA_GIT=${FA_GIT:-/work/.mirror/Dao-AILab+flash-attention/repo}
CUTLASS_GIT=${CUTLASS_GIT:-/work/.mirror/NVIDIA+cutlass/repo}
cutlass_rev=$(git --git-dir="$FA_GIT" ls-tree "$FA_REV" csrc/cutlass | awk '{print $3}')
[ -n "$cutlass_rev" ] || { echo "no csrc/cutlass submodule at $FA_REV in $FA_GIT" >&2; exit 1; }
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx "/.fa-src/" "$exclude" 2>/dev/null || echo "/.fa-src/" >> "$exclude"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
git --git-dir="$FA_GIT" archive "$FA_REV" hopper README.md | tar -x -C "$stage"
rm -rf "$stage"/hopper/test_* "$stage"/hopper/benchmark_* "$stage"/hopper/padding.py
mkdir -p "$stage/csrc/cutlass"
git --git-dir="$CUTLASS_GIT" archive "$cutlass_rev" include | tar -x -C "$stage/csrc/cutlass"
# setup.py runs `git submodule update` on import, which fails where git or the .git folder is missing:
# the packed tree already holds the submodule's headers.
python3 - "$stage/hopper/setup.py" <<'EOF'
import sys
path = sys.argv[1]
text = open(path).read()
line = 'subprocess.run(["git", "submodule", "update", "--init", "../csrc/cutlass"])'
assert text.count(line) == 1, "setup.py changed: update scripts/prepare_flash_attn.sh"
open(path, "w").write(text.replace(line, "pass  # cutlass is packed by minivllm's scripts/prepare_flash_attn.sh"))
EOF
echo "flash-attention $FA_REV, cutlass $cutlass_rev" > "$stage/REVISIONS"

rm -rf .fa-src && mkdir .fa-src
tar -czf .fa-src/fa3-src.tar.gz -C "$stage" .
du -sh .fa-src
cat <<EOF
Device call (carry [".whl", ".fa-src"]): the build (~5 min), the conformance kit and the GPU tests; then the A/B,
in the next call while the machine is warm (or alone on a fresh one: flash-ab builds first when it must):
$(cat ../shared/device/preamble.txt 2>/dev/null) MINIVLLM_COMMIT=$(git rev-parse --short HEAD) bash scripts/gpu_check.sh flash
$(cat ../shared/device/preamble.txt 2>/dev/null) MINIVLLM_COMMIT=$(git rev-parse --short HEAD) bash scripts/gpu_check.sh flash-ab
Build alone, detached (later calls poll: tail -3 /tmp/fa3-build.out ends with 'flash-attn built' or 'FAILED'):
setsid nohup bash scripts/build_flash_attn.sh > /tmp/fa3-build.out 2>&1 < /dev/null &
EOF
