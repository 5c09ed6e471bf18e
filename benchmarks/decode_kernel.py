"""Time the flash-decoding kernel alone: achieved KV bandwidth for a few tile shapes, bf16 and fp8 caches.

    python benchmarks/decode_kernel.py                      # Qwen3-0.6B heads (16 q / 8 kv, head_dim 128)
    python benchmarks/decode_kernel.py --kv-cache-dtype fp8 # float8 values + a float32 scale per row

The bytes counted are what the kernel must read: K and V rows (and, with fp8, their scales). With fp8 each
line also gives the error: the relative norm of the output against the exact (float32) attention over the
same dequantised cache.
"""

from __future__ import annotations

import argparse
import functools
import random

import torch
import triton

from minivllm.core.interfaces.attention import FP8_DTYPE
from minivllm.core.utils import cdiv
from minivllm.plugins.attention import triton_decode as K

TILES = [
    (32, 4, 2),
    (64, 4, 2),
    (64, 4, 3),
    (64, 8, 2),
    (128, 4, 2),
    (128, 4, 3),
    (128, 8, 2),
    (128, 8, 3),
    (256, 8, 2),
    (256, 8, 3),
]  # (block_n, warps, stages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto")
    parser.add_argument("--tiles", default=None, help="block_n:warps:stages,... (default: a sweep)")
    args = parser.parse_args()
    fp8 = args.kv_cache_dtype == "fp8"
    tiles = [tuple(map(int, t.split(":"))) for t in args.tiles.split(",")] if args.tiles else TILES
    heads, kv_heads, head_dim, block_size = 16, 8, 128, 256
    num_sms = torch.cuda.get_device_properties().multi_processor_count
    print(f"kv_cache_dtype={args.kv_cache_dtype}")
    print(f"{'batch':>5} {'ctx':>5} {'block_n':>7} {'warps':>5} {'stages':>6} {'splits':>6} {'us':>8} {'TB/s':>6}")
    for batch, ctx in [(256, 1024), (64, 2048), (8, 4000), (1, 4000)]:
        random.seed(batch)
        lens = [random.randint(ctx // 2, ctx * 3 // 2) if batch > 1 else ctx for _ in range(batch)]
        blocks = sum(cdiv(n, block_size) for n in lens)
        cache = torch.randn(2, blocks, block_size, kv_heads, head_dim, dtype=torch.bfloat16, device="cuda")
        scales = {}
        if fp8:
            cache = cache.to(FP8_DTYPE)
            k_scales, v_scales = torch.rand(2, blocks, block_size, kv_heads, device="cuda") / 100
            scales = dict(k_scales=k_scales, v_scales=v_scales)
        perm = torch.randperm(blocks, device="cuda").to(torch.int32)
        width = max(cdiv(n, block_size) for n in lens)
        tables, first = torch.zeros(batch, width, dtype=torch.int32, device="cuda"), 0
        for i, n in enumerate(lens):
            nb = cdiv(n, block_size)
            tables[i, :nb] = perm[first : first + nb]
            first += nb
        seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
        q = torch.randn(batch, heads, head_dim, dtype=torch.bfloat16, device="cuda")
        out = torch.empty_like(q)
        row_bytes = head_dim * cache.element_size() + (4 if fp8 else 0)
        nbytes = sum(lens) * kv_heads * row_bytes * 2
        splits = K.decode_splits(batch, kv_heads, num_sms)
        if fp8:  # the exact attention over the dequantised cache
            exact = torch.empty(q.shape, dtype=torch.float32, device="cuda")
            K.paged_decode(
                q.float(),
                cache[0].float() * k_scales[..., None],
                cache[1].float() * v_scales[..., None],
                exact,
                tables,
                seq_lens,
                0.088,
                splits,
            )
        for block_n, warps, stages in tiles:
            fn = functools.partial(
                K.paged_decode,
                q,
                cache[0],
                cache[1],
                out,
                tables,
                seq_lens,
                0.088,
                splits,
                block_n=block_n,
                num_warps=warps,
                num_stages=stages,
                **scales,
            )
            us = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3
            error = f" err {((out.float() - exact).norm() / exact.norm()).item():.2e}" if fp8 else ""
            print(
                f"{batch:>5} {ctx:>5} {block_n:>7} {warps:>5} {stages:>6} {splits:>6} {us:>8.1f} "
                f"{nbytes / us / 1e6:>6.2f}{error}"
            )


if __name__ == "__main__":
    main()
