#!/usr/bin/env bash
# The whole GPU check in one device call: GPU tests, the decode-kernel timing, and the throughput
# benchmark. Logs go to $OUT (default ./gpu_logs). Stages (default: tests kernel bench):
#   tests    pytest tests/gpu (Triton kernels vs torch, transformers parity with CUDA graphs, memory)
#   kernel   benchmarks/decode_kernel.py (flash-decoding bandwidth per tile shape)
#   bench    benchmarks/throughput.py on Qwen3-0.6B, with the transformers peer
#   eager    the same without CUDA graphs (no peer)
#   chunked  the same with scheduler="chunked" (no peer)
#   big      Llama-3.1-8B and Qwen3-8B shapes, 64 sequences (no peer)
#   ab       minivllm bench: fcfs vs chunked scheduler on the same workload, 2 interleaved repeats
#   sampler  the workload with sampler="fast", and minivllm bench: default vs fast sampler, 3 repeats
# Usage on the device machine:  bash scripts/gpu_check.sh [stage ...]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
stages=${*:-tests kernel bench}
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)' | tee -a "$OUT/device.txt"
echo "commit ${MINIVLLM_COMMIT:-unknown (set MINIVLLM_COMMIT)}" | tee -a "$OUT/device.txt"
status=0
bench() { python3 benchmarks/throughput.py --json "$OUT/results.jsonl" "$@" 2>&1 | tee -a "$OUT/bench.log" || status=1; }
for stage in $stages; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    tests) python3 -m pytest -q -rs -s tests/gpu 2>&1 | tee "$OUT/tests.log" || status=1 ;;
    kernel) python3 benchmarks/decode_kernel.py 2>&1 | tee "$OUT/kernel.log" || status=1 ;;
    bench) bench --model qwen3-0.6b --hf-prompts 32 ;;
    eager) bench --model qwen3-0.6b --hf-prompts 0 --enforce-eager ;;
    chunked) bench --model qwen3-0.6b --hf-prompts 0 --scheduler chunked ;;
    big) bench --model llama3-8b --num-seqs 64 --hf-prompts 0; bench --model qwen3-8b --num-seqs 64 --hf-prompts 0 ;;
    ab) python3 -c "from benchmarks.throughput import write_config; write_config('qwen3-0.6b', '/tmp/qwen3-0.6b')" &&
        python3 -m minivllm.cli bench /tmp/qwen3-0.6b --ab scheduler=fcfs,chunked --set load_format=dummy \
          --repeats 2 --no-progress --json "$OUT/ab.json" 2>&1 | tee "$OUT/ab.log" || status=1 ;;
    sampler) bench --model qwen3-0.6b --hf-prompts 0 --sampler fast
        python3 -c "from benchmarks.throughput import write_config; write_config('qwen3-0.6b', '/tmp/qwen3-0.6b')" &&
        python3 -m minivllm.cli bench /tmp/qwen3-0.6b --ab sampler=default,fast --set load_format=dummy \
          --repeats 3 --no-progress --json "$OUT/ab_sampler.json" 2>&1 | tee "$OUT/ab_sampler.log" || status=1 ;;
    *) echo "unknown stage $stage"; status=1 ;;
  esac
done
echo "=== done $(date -u +%H:%M:%S) status $status"
exit $status
