#!/usr/bin/env bash
# GPU checks and benchmarks in one device call, a stage at a time. Logs and JSON go to $OUT (default
# ./gpu_logs). Each stage fits well inside one call (~minutes); pick a few per call:
#   tests      pytest tests/gpu, or the paths in $TESTS (Triton kernels incl. fp8 and the fused sampler vs torch, transformers parity
#              with CUDA graphs, async scheduling, fp8; two-GPU tensor parallelism where two GPUs are visible)
#   pipeline   benchmarks/throughput.py on Qwen3-0.6B: the plain pipeline with the default sampler, async
#              scheduling with the default and with the fused sampler; benchmarks/profile_steps.py sync/async
#   fp8        throughput with kv_cache_dtype=fp8, and minivllm bench kv_cache_dtype=auto,fp8 (3 repeats)
#   ab-random  minivllm bench async_scheduling=false,true x sampler=default,fused, `random`, 3 repeats, plot
#   ab-decode  the same on `decode-heavy`
#   quality    benchmarks/kv_quality.py on SmolLM2 in bf16: its GGUF's halves .smol-a/part and .smol-b/part,
#              carried by two consecutive calls on one warm machine; the call carrying .smol-a keeps it in
#              /tmp (a later call's carry may remove the folder), the one carrying .smol-b runs the benchmark
#   tp         tests/gpu/test_tensor_parallel_gpu.py; Llama-3.1-8B and Qwen3-8B shapes at TP=1 and TP=2
#              (64 sequences); rank 0's profile of an 8B TP=2 decode step (all-reduce time); nvidia-smi after
#   big        Llama-3.1-8B and Qwen3-8B shapes at TP=1 only
#   flash      issue 28: build FlashAttention-3 (scripts/build_flash_attn.sh, ~5 min; carry .fa-src, made by
#              scripts/prepare_flash_attn.sh), then the conformance kit on the flash_attn backend and
#              tests/gpu/test_flash_attn_gpu.py
#   flash-ab   minivllm bench attention_backend=triton,flash_attn (64 prompts); builds first when /tmp/site
#              lacks the library (a fresh machine), so it also fits one call alone
# Earlier stages, kept for what is still unmeasured (benchmarks/RESULTS.md lists it):
#   kernel     benchmarks/decode_kernel.py (flash-decoding bandwidth per tile shape, bf16 and fp8 caches)
#   peer       benchmarks/throughput.py on Qwen3-0.6B with the transformers peer (32 prompts)
#   eager      the same without CUDA graphs;  chunked: with scheduler="chunked"
#   ab         minivllm bench, 64 prompts, 3 repeats: scheduler fcfs vs chunked (random, prefill-heavy),
#              kv_allocator simple vs prefix_cache (shared-prefix), enforce_eager true vs false
#   attn       minivllm bench: attention_backend torch vs triton (32 short prompts)
#   tp1        TP=1 throughput at 300ebbe, 074673a (trees in .ab/, made by gpu_prepare.sh) and now
#   serve      benchmarks/serve.py (issue 26): Qwen3-0.6B shape, 200 prompts, rates inf and 16, fcfs and chunked,
#              each with its offline arm and ratio, a py-spy profile of the API process (if the py-spy wheel is
#              in .whl); then rate inf with --no-engine-process (the in-process thread) for comparison
#   serve-8b   the same at rate inf on the Llama-3.1-8B shape, 64 prompts
#   structured minivllm bench structured_output=none,json (issue 27): Qwen3-0.6B shape with the embedded
#              model's tokenizer (.tok/, made by gpu_prepare.sh; vocab 49,152), decode-heavy, 64 prompts x 512
#              tokens, max_num_seqs 64, 5 repeats
# Usage on the device machine:  bash scripts/gpu_check.sh STAGE [STAGE ...]
# (scripts/gpu_prepare.sh, run first on the CPU machine, makes the wheels and prints the command)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv | tee -a "$OUT/device.txt"
python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)' | tee -a "$OUT/device.txt"
echo "commit ${MINIVLLM_COMMIT:-unknown (set MINIVLLM_COMMIT)}" | tee -a "$OUT/device.txt"
status=0
bench() { python3 benchmarks/throughput.py --hf-prompts 0 --json "$OUT/results.jsonl" "$@" 2>&1 | grep -v "^INFO\|it/s\]" | tee -a "$OUT/bench.log" || status=1; }
profile() { python3 benchmarks/profile_steps.py "$@" 2>&1 | tee -a "$OUT/profile.log" || status=1; }
ab() {  # minivllm bench on the Qwen3-0.6B shape with random weights, 3 interleaved repeats
  python3 -c "from minivllm.bench.shapes import write_config; write_config('qwen3-0.6b', '/tmp/qwen3-0.6b')" &&
    python3 -m minivllm.cli bench /tmp/qwen3-0.6b --set load_format=dummy --repeats 3 --no-progress "$@" 2>&1 |
    tee -a "$OUT/ab.log" || status=1
}
for stage in "$@"; do
  echo "=== $stage $(date -u +%H:%M:%S)"
  case $stage in
    tests) python3 -m pytest -q -rs -x ${TESTS:-tests/gpu} 2>&1 | tee "$OUT/tests.log" | tail -40 || status=1 ;;
    pipeline) bench --async-scheduling false --sampler default
              bench --async-scheduling true --sampler default
              bench --async-scheduling true --sampler fused
              profile --async-scheduling false --steps 30
              profile --async-scheduling true --sampler fused --steps 30 ;;
    fp8) bench --kv-cache-dtype fp8 --sampler fused
         ab --ab kv_cache_dtype=auto,fp8 --set sampler=fused --num-prompts 64 --json "$OUT/ab_fp8.json" \
            --plot "$OUT/ab_fp8.png" ;;
    ab-random) ab --ab async_scheduling=false,true --ab sampler=default,fused --num-prompts 64 \
                  --json "$OUT/ab_random.json" --plot "$OUT/ab_random.png" ;;
    ab-decode) ab --ab async_scheduling=false,true --ab sampler=default,fused --num-prompts 64 --workload decode-heavy \
                  --json "$OUT/ab_decode.json" --plot "$OUT/ab_decode.png" ;;
    quality) [ -f .smol-a/part ] && cp .smol-a/part /tmp/smol-a.part  # outlives the next call's carry
             if [ ! -f .smol-b/part ]; then echo "first half kept in /tmp: call again carrying .smol-b"; continue; fi
             cat /tmp/smol-a.part .smol-b/part > /tmp/SmolLM2-135M-Instruct.Q4_1.gguf
             sha256sum /tmp/SmolLM2-135M-Instruct.Q4_1.gguf | tee -a "$OUT/quality.log"
             python3 benchmarks/kv_quality.py --model /tmp/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda \
               --dtype bfloat16 --json "$OUT/kv_quality.jsonl" 2>&1 | grep -v "it/s\]" | tee -a "$OUT/quality.log" || status=1 ;;
    tp) python3 -m pytest -q -rs -x tests/gpu/test_tensor_parallel_gpu.py 2>&1 | tail -20 | tee "$OUT/tp_tests.log" || status=1
        for model in llama3-8b qwen3-8b; do
          bench --model $model --num-seqs 64 --sampler fused
          bench --model $model --num-seqs 64 --sampler fused --tensor-parallel-size 2
        done
        profile --model llama3-8b --num-seqs 64 --sampler fused --tensor-parallel-size 2 --steps 20
        nvidia-smi --query-compute-apps=pid,used_memory --format=csv | tee "$OUT/after.txt"
        nvidia-smi --query-gpu=index,memory.used --format=csv | tee -a "$OUT/after.txt" ;;
    big) for model in llama3-8b qwen3-8b; do bench --model $model --num-seqs 64 --sampler fused; done ;;
    kernel) for dtype in auto fp8; do
              python3 benchmarks/decode_kernel.py --kv-cache-dtype $dtype 2>&1 | tee -a "$OUT/kernel.log" || status=1
            done ;;
    peer) python3 benchmarks/throughput.py --model qwen3-0.6b --hf-prompts 32 --json "$OUT/results.jsonl" 2>&1 |
            tee -a "$OUT/bench.log" || status=1 ;;
    eager) bench --model qwen3-0.6b --enforce-eager ;;
    chunked) bench --model qwen3-0.6b --scheduler chunked ;;
    ab) ab --ab scheduler=fcfs,chunked --num-prompts 64 --json "$OUT/ab_scheduler.json"
        ab --ab scheduler=fcfs,chunked --workload prefill-heavy --num-prompts 64 --json "$OUT/ab_scheduler_prefill.json"
        ab --ab kv_allocator=simple,prefix_cache --workload shared-prefix --num-prompts 64 --json "$OUT/ab_kv.json"
        ab --ab enforce_eager=true,false --num-prompts 64 --json "$OUT/ab_eager.json" ;;
    flash) bash scripts/build_flash_attn.sh || { status=1; continue; }
           python3 -m minivllm.cli check-plugin attention_backend flash_attn 2>&1 | tee "$OUT/flash_check.log" || status=1
           python3 -m pytest -q -rs tests/gpu/test_flash_attn_gpu.py 2>&1 | tail -20 | tee "$OUT/flash_tests.log" ||
             status=1 ;;
    flash-ab) [ -f /tmp/site/flash_attn_interface.py ] || bash scripts/build_flash_attn.sh || { status=1; continue; }
              ab --ab attention_backend=triton,flash_attn --num-prompts 64 --json "$OUT/ab_flash.json" \
                 --plot "$OUT/ab_flash.png" ;;
    attn) ab --ab attention_backend=torch,triton --num-prompts 32 --max-input-len 512 --max-output-len 256 \
          --json "$OUT/ab_attn.json" ;;
    tp1) for tree in .ab/300ebbe .ab/074673a .; do
           echo "--- tree $tree"
           PYTHONPATH=/tmp/site:$PWD/$tree python3 $tree/benchmarks/throughput.py --hf-prompts 0 2>&1 |
             tee -a "$OUT/tp1.log" || status=1
         done ;;
    serve) export PATH=/tmp/site/bin:$PATH  # py-spy, from the carried wheels (the preamble installs them there)
           for sched in fcfs chunked; do  # each run ends with its offline arm (LLM.generate) and the ratios
             python3 benchmarks/serve.py --model qwen3-0.6b --num-prompts 200 --input-len 128:1024 \
               --output-len 64:512 --request-rates inf,16 --sampler fused --scheduler $sched \
               --py-spy "$OUT/serve_api_$sched.txt" --json "$OUT/serve.jsonl" 2>&1 | tee -a "$OUT/serve.log" || status=1
           done
           python3 benchmarks/serve.py --model qwen3-0.6b --num-prompts 200 --request-rates inf --sampler fused \
             --no-engine-process --no-offline --json "$OUT/serve.jsonl" 2>&1 | tee -a "$OUT/serve.log" || status=1 ;;
    serve-8b) python3 benchmarks/serve.py --model llama3-8b --num-prompts 64 --request-rates inf \
             --sampler fused --json "$OUT/serve.jsonl" 2>&1 | tee -a "$OUT/serve.log" || status=1 ;;
    structured) python3 -c "from minivllm.bench.shapes import write_config
write_config('qwen3-0.6b', '/tmp/qwen3-0.6b-tok', vocab_size=49152)" && cp .tok/* /tmp/qwen3-0.6b-tok/ &&
                python3 -m minivllm.cli bench /tmp/qwen3-0.6b-tok --set load_format=dummy --workload decode-heavy \
                  --num-prompts 64 --max-output-len 512 --set max_num_seqs=64 --ab structured_output=none,json \
                  --repeats 5 --no-progress --json "$OUT/structured.json" --plot "$OUT/structured.png" 2>&1 |
                  tee -a "$OUT/structured.log" || status=1 ;;
    *) echo "unknown stage $stage"; status=1 ;;
  esac
done
echo "=== done $(date -u +%H:%M:%S) status $status"
exit $status
