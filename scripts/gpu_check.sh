#!/usr/bin/env bash
# The whole GPU check in one device call: GPU tests, the decode-kernel timing, and the throughput
# benchmark. Logs go to $OUT (default ./gpu_logs). Stages (default: tests kernel bench):
#   tests    pytest tests/gpu (Triton kernels vs torch, transformers parity with CUDA graphs, memory)
#   kernel   benchmarks/decode_kernel.py (flash-decoding bandwidth per tile shape)
#   bench    benchmarks/throughput.py on Qwen3-0.6B, with the transformers peer
#   eager    the same without CUDA graphs (no peer)
#   chunked  the same with scheduler="chunked" (no peer)
#   big      Llama-3.1-8B and Qwen3-8B shapes, 64 sequences (no peer)
#   ab       minivllm bench, 64 prompts and 3 interleaved repeats each: scheduler fcfs vs chunked
#            (random and prefill-heavy workloads), kv_allocator simple vs prefix_cache (shared-prefix),
#            enforce_eager true vs false
#   attn     minivllm bench: attention_backend torch vs triton (32 short prompts: torch loops in Python)
#   tp1      TP=1 throughput before and after tensor parallelism landed: trees of 300ebbe and 074673a
#            (made here with `git archive` into .ab/, carried) beside the working tree, in one run
#   serve    benchmarks/serve.py: the OpenAI server under Poisson arrivals (needs the server wheels gpu_prepare.sh adds to .whl)
#   sampler  the workload with sampler="fast", and minivllm bench: default vs fast sampler, 3 repeats
# Usage on the device machine:  bash scripts/gpu_check.sh [stage ...]
# (scripts/gpu_prepare.sh, run first on the CPU machine, makes what it needs and prints the command)
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
ab() {  # minivllm bench on the Qwen3-0.6B shape with random weights, 3 interleaved repeats
  python3 -c "from benchmarks.throughput import write_config; write_config('qwen3-0.6b', '/tmp/qwen3-0.6b')" &&
    python3 -m minivllm.cli bench /tmp/qwen3-0.6b --set load_format=dummy --repeats 3 --no-progress "$@" 2>&1 |
    tee -a "$OUT/ab.log" || status=1
}
for stage in $stages; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    tests) python3 -m pytest -q -rs -s tests/gpu 2>&1 | tee "$OUT/tests.log" || status=1 ;;
    kernel) python3 benchmarks/decode_kernel.py 2>&1 | tee "$OUT/kernel.log" || status=1 ;;
    bench) bench --model qwen3-0.6b --hf-prompts 32 ;;
    eager) bench --model qwen3-0.6b --hf-prompts 0 --enforce-eager ;;
    chunked) bench --model qwen3-0.6b --hf-prompts 0 --scheduler chunked ;;
    big) bench --model llama3-8b --num-seqs 64 --hf-prompts 0; bench --model qwen3-8b --num-seqs 64 --hf-prompts 0 ;;
    ab) ab --ab scheduler=fcfs,chunked --num-prompts 64 --json "$OUT/ab_scheduler.json"
        ab --ab scheduler=fcfs,chunked --workload prefill-heavy --num-prompts 64 --json "$OUT/ab_scheduler_prefill.json"
        ab --ab kv_allocator=simple,prefix_cache --workload shared-prefix --num-prompts 64 --json "$OUT/ab_kv.json"
        ab --ab enforce_eager=true,false --num-prompts 64 --json "$OUT/ab_eager.json" ;;
    attn) ab --ab attention_backend=torch,triton --num-prompts 32 --max-input-len 512 --max-output-len 256 \
          --json "$OUT/ab_attn.json" ;;
    tp1) for tree in .ab/300ebbe .ab/074673a .; do
           echo "--- tree $tree"
           PYTHONPATH=/tmp/site:$PWD/$tree python3 $tree/benchmarks/throughput.py --hf-prompts 0 2>&1 |
             tee -a "$OUT/tp1.log" || status=1
         done ;;
    serve) python3 benchmarks/serve.py --model qwen3-0.6b --num-prompts 200 --request-rates 16,inf \
             --json "$OUT/serve.jsonl" 2>&1 | tee "$OUT/serve.log" || status=1 ;;
    sampler) bench --model qwen3-0.6b --hf-prompts 0 --sampler fast
        ab --ab sampler=default,fast --json "$OUT/ab_sampler.json" ;;
    *) echo "unknown stage $stage"; status=1 ;;
  esac
done
echo "=== done $(date -u +%H:%M:%S) status $status"
exit $status
