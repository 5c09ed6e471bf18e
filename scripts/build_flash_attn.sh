#!/usr/bin/env bash
# Device side of the FlashAttention-3 build (issue 28): compiles, with no network, the sources that
# scripts/prepare_flash_attn.sh packed into .fa-src/ on the CPU machine, and installs the package into
# $FA_SITE (/tmp/site, where the device preamble installs the carried wheels): flash_attn_interface.py, which
# the flash_attn attention backend imports, flash_attn_config.py and flash_attn_3/ with its _C extension.
#
# How to run on the device (the `run` tool; carry ".fa-src"):
#   bash scripts/build_flash_attn.sh && export PYTHONPATH=/tmp/site:$PWD && ...tests and benchmarks...
# or detached, when the rest would not fit in the same call (the build goes on after the call returns, on a
# machine kept warm by the next calls):
#   setsid nohup bash scripts/build_flash_attn.sh > /tmp/fa3-build.out 2>&1 < /dev/null &
# and in later calls:  tail -3 /tmp/fa3-build.out   (the last line says 'flash-attn built' or 'FAILED').
#
# Only what the backend calls is compiled: the Hopper (sm_90a) forward kernels for head dims 64 and 128 (the
# 64 one also serves head dims under 64), bf16 and fp16, with varlen, the paged KV cache and split-KV
# (flash_attn_varlen_func, flash_attn_with_kvcache), plus the split-KV combine and the scheduler kernel. No
# backward, fp8, softcap, local attention, appended KV, clusters, other head dims or Ampere kernels
# (FLASH_ATTENTION_DISABLE_* below, read by FlashAttention-3's setup.py, which lists the .cu files to
# compile from them). That is 16 kernel files plus 3 others: about 75 s and 4 GiB each for nvcc (a
# 128-dim paged split file, measured on the CPU machine), so with MAX_JOBS=16 a 16-core machine with 128 GiB
# builds in roughly 3 to 5 minutes. The compiler's output goes to $FA_WORK/build.log (and to $OUT, when set).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${FA_SRC:-$PWD/.fa-src/fa3-src.tar.gz}
WORK=${FA_WORK:-/tmp/fa3}
SITE=${FA_SITE:-/tmp/site}
start=$(date +%s)
fail() { echo "flash-attn build FAILED after $(( $(date +%s) - start )) s: $*"; exit 1; }
[ -f "$SRC" ] || fail "$SRC is missing: run scripts/prepare_flash_attn.sh on the CPU machine and carry .fa-src"
command -v nvcc > /dev/null || export PATH=/usr/local/cuda/bin:$PATH
command -v nvcc > /dev/null || fail "no nvcc"
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
command -v ninja > /dev/null || export PATH=$(python3 -c 'import ninja; print(ninja.BIN_DIR)' 2> /dev/null):$PATH
command -v ninja > /dev/null || fail "no ninja (torch would compile one file at a time)"

for feature in BACKWARD FP8 SOFTCAP LOCAL APPENDKV CLUSTER PACKGQA SM80 HDIM96 HDIM192 HDIM256 HDIMDIFF64 \
               HDIMDIFF192; do
  var=FLASH_ATTENTION_DISABLE_$feature
  export "$var=${!var:-TRUE}"
done
export FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTENTION_OFFLINE_BUILD=1 TORCH_CUDA_ARCH_LIST=9.0a
export MAX_JOBS=${MAX_JOBS:-16} NVCC_THREADS=${NVCC_THREADS:-1}  # one target (sm_90a): nvcc's threads idle

rm -rf "$WORK" && mkdir -p "$WORK"
tar -xzf "$SRC" -C "$WORK"
LOG=$WORK/build.log
echo "building $(cat "$WORK/REVISIONS") with MAX_JOBS=$MAX_JOBS on $(nproc) cores; $(nvcc --version | tail -1)"
(cd "$WORK/hopper" && python3 setup.py build_ext --inplace) > "$LOG" 2>&1 &
build=$!
ticks=0
while kill -0 $build 2> /dev/null; do  # a line a minute: ninja's progress ([files done/19])
  sleep 5
  (( ++ticks % 12 )) || echo "  $(( $(date +%s) - start )) s: $(grep -o '^\[[0-9]*/[0-9]*\]' "$LOG" | tail -1)"
done
status=0 && wait $build || status=$?
[ -n "${OUT:-}" ] && [ -d "$OUT" ] && cp "$LOG" "$OUT/fa3-build.log"
if [ $status != 0 ]; then
  grep -n -m 40 -E 'error|Error|FAILED' "$LOG" || tail -40 "$LOG"
  fail "setup.py exited with $status (log: $LOG)"
fi

mkdir -p "$SITE"
(cd "$WORK/hopper" && cp -r flash_attn_interface.py flash_attn_config.py flash_attn_3 "$SITE/")
# fails loudly when a kernel is missing or wrong: one varlen forward per dtype and head dim against torch
PYTHONPATH=$SITE python3 - <<'EOF' || fail "the built library does not import or does not compute attention"
import torch
import torch.nn.functional as F
import flash_attn_interface as fa

for dtype in (torch.bfloat16, torch.float16):
    for d in (64, 128):
        q, k, v = (torch.randn(300, 4, d, device="cuda", dtype=dtype) for _ in range(3))
        cu = torch.tensor([0, 100, 300], device="cuda", dtype=torch.int32)
        out = fa.flash_attn_varlen_func(q, k, v, cu, cu, 200, 200, causal=True)
        ref = torch.cat([F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)), is_causal=True)
                         .transpose(0, 1) for a, b in ((0, 100), (100, 300))])
        err = (out - ref).abs().max().item()
        assert err < 2e-2, f"{dtype} head dim {d}: max error {err}"
print("flash_attn_interface works: varlen forward, bf16 and fp16, head dims 64 and 128")
EOF
echo "flash-attn built in $(( $(date +%s) - start )) s into $SITE"
