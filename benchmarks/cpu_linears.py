"""Candidate CPU linear kernels on SmolLM2-135M's shapes, against today's oneDNN-packed bfloat16 linear.

For each projection of the model (q/k/v packed, o, gate/up packed, down, and the 49152-row LM head) and each
row count (1: one stream decoding; 16: sixteen streams), times:

- ``bf16_packed``: oneDNN's packed bfloat16 weight (``layers/cpu_linear.py``, today's default);
- ``f32_packed``: the same in float32;
- ``int8_bf16`` / ``int8_f32``: ``aten._weight_int8pack_mm``, int8 weights with a scale per output channel,
  bfloat16 / float32 activations (weight-only: the activations stay floating point);
- ``int4_gN``: ``aten._weight_int4pack_mm_for_cpu``, int4 weights in groups of N along the input with a
  bfloat16 scale and zero per group (llama.cpp's Q4_0/Q4_1/Q4_K are groups of 32), bfloat16 activations;
- ``dyn_int8``: ``torch.ao``'s dynamically quantized linear (fbgemm: int8 weights and activations quantized
  per call, float32 in and out).

The CPU may be shared: every kernel of a shape runs once per round, rounds interleave, and the median of
``--rounds`` rounds is kept beside the fastest (each round times ``--iters`` calls); ratios use the fastest,
the figure least disturbed by other jobs.

    python benchmarks/cpu_linears.py [--threads 2] [--rounds 7] [--iters 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from minivllm.layers import cpu_linear

# (name, out features, in features) of SmolLM2-135M: hidden 576, intermediate 1536, 9 q / 3 kv heads of 64
SHAPES = [("qkv", 960, 576), ("o", 576, 576), ("gate_up", 3072, 576), ("down", 576, 1536), ("lm_head", 49152, 576)]


def kernels(weight: torch.Tensor) -> dict:
    """name -> (function of the activation x [M, in] in float32, dtype x is given in)."""
    out = {}
    packed = cpu_linear.pack(weight.bfloat16())
    out["bf16_packed"] = (lambda x: cpu_linear.packed_linear(x, packed, None), torch.bfloat16)
    packed32 = cpu_linear.pack(weight)
    out["f32_packed"] = (lambda x: cpu_linear.packed_linear(x, packed32, None), torch.float32)
    scale = weight.abs().amax(1).clamp(min=1e-8) / 127
    w8 = (weight / scale[:, None]).round().to(torch.int8)
    out["int8_bf16"] = (lambda x: torch.ops.aten._weight_int8pack_mm(x, w8, scale.bfloat16()), torch.bfloat16)
    out["int8_f32"] = (lambda x: torch.ops.aten._weight_int8pack_mm(x, w8, scale), torch.float32)
    for group in (32, 64, 128):
        if weight.shape[1] % group:
            continue  # 576 input features: no groups of 128
        w4, scales_zeros = int4_weight(weight, group)
        out[f"int4_g{group}"] = (
            lambda x, w4=w4, sz=scales_zeros, g=group: torch.ops.aten._weight_int4pack_mm_for_cpu(x, w4, g, sz),
            torch.bfloat16,
        )
    dyn = torch.ao.nn.quantized.dynamic.Linear(weight.shape[1], weight.shape[0], bias_=False)
    dyn.set_weight_bias(
        torch.quantize_per_channel(weight, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8),
        None,
    )
    out["dyn_int8"] = (dyn, torch.float32)
    return out


def int4_weight(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 of ``weight`` in groups, as the kernel takes it: w = (q - 8) * scale + zero."""
    n, k = weight.shape
    g = weight.reshape(n, k // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    q = ((g - lo[..., None]) / scale[..., None]).round().clamp(0, 15).reshape(n, k).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    scales_zeros = torch.stack([scale, lo + 8 * scale], -1).transpose(0, 1).contiguous().bfloat16()  # [k/g, n, 2]
    return packed, scales_zeros


def time_calls(fn, x: torch.Tensor, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn(x)
    return (time.perf_counter() - start) / iters * 1e6  # microseconds a call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--json", help="append one JSON line per shape and row count to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name, n, k in SHAPES:
        weight = torch.randn(n, k) * 0.02
        candidates = kernels(weight)
        for m in (1, 16):
            x = torch.randn(m, k)
            inputs = {kname: x.to(dtype) for kname, (_, dtype) in candidates.items()}
            reference = x @ weight.T
            times: dict[str, list[float]] = {kname: [] for kname in candidates}
            iters = max(10, args.iters // (8 if name == "lm_head" else 1))
            for kname, (fn, _) in candidates.items():  # warm-up (oneDNN builds its primitives on first use)
                fn(inputs[kname])
            for _ in range(args.rounds):
                for kname, (fn, _) in candidates.items():
                    times[kname].append(time_calls(fn, inputs[kname], iters))
            row = {"shape": name, "out": n, "in": k, "rows": m, "threads": args.threads}
            for kname, (fn, _) in candidates.items():
                err = (fn(inputs[kname]).float() - reference).norm() / reference.norm()
                row[kname] = {
                    "us": round(min(times[kname]), 1),
                    "us_median": round(statistics.median(times[kname]), 1),
                    "rel_err": round(err.item(), 4),
                }
            rows.append(row)
            base = row["bf16_packed"]["us"]
            cells = "  ".join(
                f"{kname} {row[kname]['us']:.0f}us x{base / row[kname]['us']:.2f} e{row[kname]['rel_err']:.3f}"
                for kname in candidates
            )
            print(f"{name:8s} M={m:2d}  {cells}", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
