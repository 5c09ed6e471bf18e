"""Time one sampling step of the `default` and `fast` samplers side by side, per setting.

    python benchmarks/sampler.py [--batch 64] [--vocab 151936] [--threads 1] [--repeats 5] [--device cpu]

Random float32 logits of [batch, vocab] (Qwen3's vocabulary by default); every row uses the same
SamplingParams. Prints the best-of-repeats time per step of each sampler and their ratio, as Markdown."""

import argparse
import time

import torch

from minivllm.core.sampling_params import SamplingParams
from minivllm.plugins.samplers.default import DefaultSampler
from minivllm.plugins.samplers.fast import FastSampler

SETTINGS = {
    "temperature 0.6": SamplingParams(temperature=0.6),
    "top_k 50": SamplingParams(temperature=0.6, top_k=50),
    "top_k 50 + top_p 0.9": SamplingParams(temperature=0.6, top_k=50, top_p=0.9),
    "min_p 0.05": SamplingParams(temperature=0.6, min_p=0.05),
    "top_p 0.9 (no top_k)": SamplingParams(temperature=0.6, top_p=0.9),
}


def best_ms(sampler, logits: torch.Tensor, params: list[SamplingParams], repeats: int) -> float:
    steps = [0] * len(params)
    sampler.sample(logits.clone(), params, steps)  # warm-up
    times = []
    for _ in range(repeats):
        batch = logits.clone()
        if batch.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        sampler.sample(batch, params, steps)
        if batch.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    logits = torch.randn(args.batch, args.vocab, generator=torch.Generator().manual_seed(0)).to(device) * 3
    print(
        f"batch {args.batch}, vocab {args.vocab}, {device}"
        f"{f', {args.threads} thread(s)' if device.type == 'cpu' else ''}, best of {args.repeats}\n"
    )
    print("| setting | default ms | fast ms | default ÷ fast |\n| --- | ---: | ---: | ---: |")
    for name, params in SETTINGS.items():
        rows = [params] * args.batch
        slow = best_ms(DefaultSampler(args.vocab, device, seed=0), logits, rows, args.repeats)
        fast = best_ms(FastSampler(args.vocab, device, seed=0), logits, rows, args.repeats)
        print(f"| {name} | {slow:,.1f} | {fast:,.1f} | {slow / fast:.1f}× |")


if __name__ == "__main__":
    main()
