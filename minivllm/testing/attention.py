"""Attention backend contracts: on the batches the runner builds, the output equals plain attention and the
new K/V land in their cache slots, with the model's dtype in the cache and, for backends that take it, fp8.

A case is one step's batch: each sequence has a cached context (its K/V already in the paged cache) and
new tokens, a whole prompt, a chunk over the context or one decode token (one-token prompts too), on
shuffled blocks. The kit writes the context into the cache, builds the ``AttentionMetadata`` as the
runner does, calls ``prepare`` and ``forward`` as the runner and the ``Attention`` layer do, and compares
with softmax(q kᵀ · scale) v over each sequence's context in float64, with no cache. It runs on the CPU
when the backend is available there, else on the GPU when there is one it runs on, else it is skipped.
"""

from __future__ import annotations

import torch

from minivllm.core.interfaces import AttentionBackend, AttentionMetadata, KVScales, quantize_fp8
from minivllm.core.utils import cdiv
from minivllm.testing.kit import Contract, ContractFailure, ContractSkipped, registry


class Case:
    """One step's batch, ``seqs`` as (cached context, new tokens) pairs; ``padding`` decode rows with slot -1
    (as CUDA graphs pad a batch) must write nothing; ``fp8``: the cache holds :func:`quantize_fp8`'s values
    and scales (``kv_cache_dtype="fp8"``)."""

    def __init__(
        self,
        what: str,
        seqs: list[tuple[int, int]],
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        block_size: int,
        padding: int = 0,
        fp8: bool = False,
    ):
        self.what, self.seqs, self.padding, self.fp8 = what, seqs, padding, fp8
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim, self.block_size = head_dim, block_size

    def describe(self, dtype: torch.dtype, device: torch.device) -> str:
        rows = ", ".join(f"({ctx} cached, {new} new)" for ctx, new in self.seqs)
        pad = f", then {self.padding} padding rows (slot -1, seq_len 1)" if self.padding else ""
        pad += ", an fp8 KV cache (quantize_fp8's values and scales)" if self.fp8 else ""
        return (
            f"{self.what}: backend(num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, head_dim="
            f"{self.head_dim}, block_size={self.block_size}, dtype={dtype}) on {device}; sequences {rows}{pad}; "
            "each sequence's blocks drawn at random from the cache, q/k/v from torch.randn (seed 0)"
        )


def layout(case: Case, device: torch.device, dtype: torch.dtype):
    """The cache with each context's K/V in place (and its scales with an fp8 cache), the new tokens' q/k/v,
    the metadata, and every sequence's full K/V (context then new, as the cache holds them) for the
    reference."""
    g = torch.Generator().manual_seed(0)
    bs, hkv, d = case.block_size, case.num_kv_heads, case.head_dim
    tables = [cdiv(ctx + new, bs) for ctx, new in case.seqs]
    num_blocks = sum(tables) + 3
    order = torch.randperm(num_blocks, generator=g).tolist()
    k_cache = torch.randn(num_blocks, bs, hkv, d, generator=g).to(device, dtype)  # stale contents everywhere
    v_cache = torch.randn(num_blocks, bs, hkv, d, generator=g).to(device, dtype)
    q, k, v, slots, full, block_tables = [], [], [], [], [], []
    for (ctx, new), num in zip(case.seqs, tables):
        blocks, order = order[:num], order[num:]
        keys = torch.randn(ctx + new, hkv, d, generator=g).to(device, dtype)
        values = torch.randn(ctx + new, hkv, d, generator=g).to(device, dtype)
        seq_slots = [blocks[pos // bs] * bs + pos % bs for pos in range(ctx + new)]
        k_cache.view(-1, hkv, d)[seq_slots[:ctx]] = keys[:ctx]  # the cached context, as earlier steps left it
        v_cache.view(-1, hkv, d)[seq_slots[:ctx]] = values[:ctx]
        q.append(torch.randn(new, case.num_heads, d, generator=g).to(device, dtype))
        k.append(keys[ctx:])
        v.append(values[ctx:])
        slots += seq_slots[ctx:]
        full.append((keys, values))
        block_tables.append(blocks)
    kv_scales = None
    if case.fp8:  # quantised row by row, as a backend stores each token's K/V
        (k_cache, k_scale), (v_cache, v_scale) = quantize_fp8(k_cache), quantize_fp8(v_cache)
        kv_scales = KVScales(k_scale, v_scale)
        full = [tuple(dequantized(*quantize_fp8(x)) for x in pair) for pair in full]
    for _ in range(case.padding):
        q.append(torch.randn(1, case.num_heads, d, generator=g).to(device, dtype))
        k.append(torch.randn(1, hkv, d, generator=g).to(device, dtype))
        v.append(torch.randn(1, hkv, d, generator=g).to(device, dtype))
        slots.append(-1)
        block_tables.append([0])
    news = [new for _, new in case.seqs] + [1] * case.padding
    lens = [ctx + new for ctx, new in case.seqs] + [1] * case.padding
    starts = [0]
    for n in news:
        starts.append(starts[-1] + n)
    width = max(map(len, block_tables))
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in block_tables], dtype=torch.int32, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        max_query_len=max(news),
        max_seq_len=max(lens),
        query_start_loc_host=starts,
        seq_lens_host=lens,
    )
    return k_cache, v_cache, kv_scales, torch.cat(q), torch.cat(k), torch.cat(v), meta, full


def dequantized(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return values.float() * scales[..., None]


def reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of the last ``len(q)`` positions over ``keys``/``values``, in float64.
    q [n, Hq, D], keys/values [L, Hkv, D] -> [n, Hq, D]."""
    n, length = q.shape[0], keys.shape[0]
    group = q.shape[1] // keys.shape[1]
    k = keys.double().repeat_interleave(group, dim=1)
    vv = values.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,lhd->hnl", q.double(), k) * scale
    visible = torch.arange(length)[None, :] <= (length - n + torch.arange(n))[:, None]  # [n, L]
    scores = scores.masked_fill(~visible.to(scores.device), float("-inf"))
    return torch.einsum("hnl,lhd->nhd", scores.softmax(-1), vv)


def device_for(plugin: str, backend: type[AttentionBackend]) -> torch.device:
    cpu = torch.device("cpu")
    if backend.is_available(cpu):
        return cpu
    if torch.cuda.is_available() and backend.is_available(torch.device("cuda")):
        return torch.device("cuda")
    gpu = "nor on this machine's GPU" if torch.cuda.is_available() else "and there is no GPU here"
    raise ContractSkipped(f"attention backend {plugin!r} is not available on the CPU {gpu}: run the kit where it runs")


def check_case(contract: str, plugin: str, case: Case) -> None:
    backend_cls = registry("attention_backend").get(plugin)
    device = device_for(plugin, backend_cls)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    # with fp8, a backend may attend over the new tokens' exact K/V rather than what it stored
    tolerance = 0.1 if case.fp8 else 1e-4 if dtype == torch.float32 else 3e-2
    k_cache, v_cache, kv_scales, q, k, v, meta, full = layout(case, device, dtype)
    before = [
        (k_cache.clone(), kv_scales and kv_scales.k.clone()),
        (v_cache.clone(), kv_scales and kv_scales.v.clone()),
    ]
    backend = backend_cls(case.num_heads, case.num_kv_heads, case.head_dim, case.block_size, dtype)
    scale = case.head_dim**-0.5
    backend.prepare(meta)
    fp8 = {"kv_scales": kv_scales} if case.fp8 else {}
    out = backend.forward(q, k, v, k_cache, v_cache, meta, scale, **fp8)
    if out.shape != q.shape:
        raise ContractFailure(
            contract,
            f"forward returned shape {tuple(out.shape)} for q of {tuple(q.shape)}",
            case.describe(dtype, device),
        )
    if case.what == "store":
        slots = meta.slot_mapping[meta.slot_mapping >= 0]
        caches = [("K", k_cache, kv_scales and kv_scales.k, k), ("V", v_cache, kv_scales and kv_scales.v, v)]
        for (name, cache, scales, new), (old, old_scales) in zip(caches, before):
            got, want, new = cache.flatten(0, 1), old.flatten(0, 1).clone(), new[meta.slot_mapping >= 0]
            if case.fp8:  # fp8 has no copy or comparison kernels on the CPU: compare the bytes, and the scales
                new, new_scales = quantize_fp8(new)
                got, want, new = got.view(torch.uint8), want.view(torch.uint8), new.view(torch.uint8)
                got, want = (
                    torch.cat([got.flatten(1), scales.flatten(0, 1).view(torch.uint8)], dim=1),
                    torch.cat(
                        [want.flatten(1), old_scales.flatten(0, 1).index_copy(0, slots, new_scales).view(torch.uint8)],
                        dim=1,
                    ),
                )
                new = torch.cat([new.flatten(1), new_scales.view(torch.uint8)], dim=1)
            want[slots] = new.reshape(want[slots].shape)
            wrong = (got != want).flatten(1).any(dim=1).nonzero().flatten().tolist()
            if wrong:
                raise ContractFailure(
                    contract,
                    f"after forward, the {name} cache differs from the expected at slots "
                    f"{wrong[:8]} (the new tokens' slots are {meta.slot_mapping.tolist()}; every "
                    "other slot must be left as it was)",
                    case.describe(dtype, device),
                )
        return
    starts = meta.query_start_loc_host
    for i, ((ctx, new), (keys, values)) in enumerate(zip(case.seqs, full)):
        want = reference(q[starts[i] : starts[i + 1]], keys, values, scale)
        error = (out[starts[i] : starts[i + 1]].double() - want).abs()  # [new, Hq, D]
        if error.max() > tolerance:
            token, head = divmod(int(error.amax(dim=2).argmax()), case.num_heads)
            raise ContractFailure(
                contract,
                f"sequence {i} ({ctx} cached, {new} new): new token {token} (position "
                f"{ctx + token}), query head {head} differs from the reference by "
                f"{float(error.max()):.3g} (tolerance {tolerance})",
                case.describe(dtype, device),
            )


def batches(bs: int, heads: int, kv_heads: int, head_dim: int) -> list[Case]:
    """A prefill batch, a mixed batch and a decode batch of one shape, smallest first."""
    return [
        Case("prefill", [(0, 1), (0, 5), (0, bs + 3)], heads, kv_heads, head_dim, bs),
        Case("mixed", [(0, 17), (bs, 7), (2 * bs + 1, 1), (0, 1), (bs - 1, 2)], heads, kv_heads, head_dim, bs),
        Case("decode", [(3 * bs // 2, 1), (bs - 1, 1), (0, 1), (2 * bs, 1)], heads, kv_heads, head_dim, bs),
    ]


def stores(m: int, fp8: bool) -> list[Case]:
    return [
        Case("store", [(0, 5), (m, 3), (m + 2, 1)], 4, 2, 32, m, fp8=fp8),
        Case("store", [(m + 2, 1), (3, 1)], 4, 2, 32, m, padding=2, fp8=fp8),
    ]


def cases_contract(name: str, summary: str, cases) -> Contract:
    def run(plugin: str, options: dict) -> None:
        backend = registry("attention_backend").get(plugin)
        if name == "fp8_kv_cache" and "fp8" not in backend.kv_cache_dtypes:
            raise ContractSkipped(f"attention backend {plugin!r} does not take kv_cache_dtype='fp8'")
        for case in cases(backend.block_size_multiple):
            check_case(name, plugin, case)

    return Contract("attention_backend", name, summary, run)


CONTRACTS = [
    cases_contract(
        "matches_reference",
        "equal to plain attention on prefill, chunk-over-cache, decode and mixed batches, one-token prompts included",
        lambda m: batches(m, 4, 2, 64),
    ),
    cases_contract(
        "gqa",
        "equal to plain attention with 1, 2, 4 and 8 query heads per KV head",
        lambda m: [c for heads, kv in ((4, 4), (4, 2), (8, 2), (8, 1)) for c in batches(m, heads, kv, 32)],
    ),
    cases_contract(
        "block_sizes",
        "equal to plain attention with every block size it accepts (1, 2 and 4 times its block_size_multiple)",
        lambda m: [c for bs in (m, 2 * m, 4 * m) for c in batches(bs, 4, 2, 32)],
    ),
    cases_contract(
        "kv_store",
        "forward writes each new token's K and V at its slot, padding rows (slot -1) nowhere, "
        "and leaves every other slot alone",
        lambda m: stores(m, fp8=False),
    ),
    cases_contract(
        "fp8_kv_cache",
        "with kv_cache_dtype='fp8' (when it takes it): equal to plain attention over what "
        "the cache holds, and each new token stored as quantize_fp8's values and scale",
        lambda m: [Case(c.what, c.seqs, 4, 2, 32, m, fp8=True) for c in batches(m, 4, 2, 32)] + stores(m, fp8=True),
    ),
]
