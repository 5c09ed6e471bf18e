#!/usr/bin/env bash
# Builds llama.cpp's benchmark tools from source, for the llama.cpp peer of benchmarks/cpu.py (speed) and
# benchmarks/kv_quality.py (perplexity). Never run in CI: it downloads ~75 MB and compiles for about 4 minutes
# on 2 cores.
#
# Source: the llama-cpp-python sdist from the package index (the only source reachable here), which vendors
# llama.cpp under vendor/llama.cpp; its version is printed and written to .llama.cpp/VERSION. Built with
# cmake, Release, -DGGML_NATIVE=ON (the instructions of this CPU) but without AMX, CPU backend only, static,
# and only the three targets the benchmarks call. AMX off: on this project's Sapphire Rapids machine ggml's
# AMX matmul segfaults on any batch of more than one row (prefill, parallel streams, perplexity), in
# ggml_backend_amx_mul_mat (`ldtilecfg`), as in ggml-org/llama.cpp#20824 (machine-dependent, closed without a
# fix), so no prompt can be run. One stream's decode alone (`llama-bench -p 0`, no prompt) does run with AMX,
# 2.5x faster than without (its weights are repacked for AVX512-VNNI kernels): AMX=1 builds that variant into
# .llama.cpp/bin-amx, for that figure only (benchmarks/RESULTS.md). The targets:
#   llama-bench           one stream's decode speed (`-p 0 -n 64`)
#   llama-batched-bench   N parallel streams (`-npl 1,16`), prefill and decode timed apart
#   llama-perplexity      perplexity of a text in windows of `-c` tokens
# into .llama.cpp/bin (git-ignored through .git/info/exclude). Then:
#   python benchmarks/cpu.py --llama-cpp .llama.cpp/bin ...
#   python benchmarks/kv_quality.py --setting quantization --llama-cpp .llama.cpp/bin ...
#
#   bash scripts/build_llama_cpp.sh [SDIST]   # SDIST: a llama_cpp_python-*.tar.gz already downloaded
# JOBS=N sets make's parallelism (default 2); AMX=1 keeps AMX on (into .llama.cpp/bin-amx, see above).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$PWD/.llama.cpp
exclude=$(git rev-parse --git-common-dir)/info/exclude  # shared by every worktree of the repository
grep -qx "/.llama.cpp/" "$exclude" 2>/dev/null || echo "/.llama.cpp/" >> "$exclude"
mkdir -p "$out"
sdist=${1:-}
if [ -z "$sdist" ]; then
  python3 -m pip download -q --no-binary :all: --no-deps llama-cpp-python -d "$out/sdist"
  sdist=$(ls -t "$out"/sdist/llama_cpp_python-*.tar.gz | head -1)
fi
rm -rf "$out/src" && mkdir -p "$out/src"
tar xzf "$sdist" -C "$out/src" --strip-components=1
basename "$sdist" .tar.gz | tee "$out/VERSION"
flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"  # gcc: explicit ISA flags win over -march=native's
variant=""
[ "${AMX:-0}" = 1 ] && flags="" && variant="-amx"
cmake -S "$out/src/vendor/llama.cpp" -B "$out/build$variant" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON > "$out/cmake.log"
cmake --build "$out/build$variant" --config Release -j "${JOBS:-2}" \
  --target llama-bench llama-batched-bench llama-perplexity
mkdir -p "$out/bin$variant"
for tool in llama-bench llama-batched-bench llama-perplexity; do
  cp "$out/build$variant/bin/$tool" "$out/bin$variant/"
done
echo "built: $(ls "$out/bin$variant" | tr '\n' ' ')in $out/bin$variant"
