"""Time the flash-decoding kernel alone: achieved KV bandwidth for a few tile shapes.

    python benchmarks/decode_kernel.py   # Qwen3-0.6B heads (16 q / 8 kv, head_dim 128), bf16
"""

from __future__ import annotations

import random

import torch
import triton

from minivllm.plugins.attention import triton_kernels as K


def main() -> None:
    heads, kv_heads, head_dim, block_size = 16, 8, 128, 256
    num_sms = torch.cuda.get_device_properties().multi_processor_count
    print(f"{'batch':>5} {'ctx':>5} {'block_n':>7} {'warps':>5} {'stages':>6} {'splits':>6} {'us':>8} {'TB/s':>6}")
    for batch, ctx in [(256, 1024), (64, 2048), (8, 4000), (1, 4000)]:
        random.seed(batch)
        lens = [random.randint(ctx // 2, ctx * 3 // 2) if batch > 1 else ctx for _ in range(batch)]
        blocks = sum(-(-n // block_size) for n in lens)
        cache = torch.randn(2, blocks, block_size, kv_heads, head_dim, dtype=torch.bfloat16, device="cuda")
        perm = torch.randperm(blocks, device="cuda").to(torch.int32)
        width = max(-(-n // block_size) for n in lens)
        tables, first = torch.zeros(batch, width, dtype=torch.int32, device="cuda"), 0
        for i, n in enumerate(lens):
            nb = -(-n // block_size)
            tables[i, :nb] = perm[first : first + nb]
            first += nb
        seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
        q = torch.randn(batch, heads, head_dim, dtype=torch.bfloat16, device="cuda")
        out = torch.empty_like(q)
        nbytes = sum(lens) * kv_heads * head_dim * 2 * 2
        splits = K.decode_splits(batch, kv_heads, num_sms)
        for block_n, warps, stages in [(32, 4, 2), (64, 4, 2), (64, 4, 3), (64, 8, 2), (128, 4, 2), (128, 8, 3)]:
            fn = lambda: K.paged_decode(q, cache[0], cache[1], out, tables, seq_lens, 0.088, splits,  # noqa: E731
                                        block_n=block_n, num_warps=warps, num_stages=stages)
            us = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3
            print(f"{batch:>5} {ctx:>5} {block_n:>7} {warps:>5} {stages:>6} {splits:>6} {us:>8.1f} {nbytes / us / 1e6:>6.2f}")


if __name__ == "__main__":
    main()
