"""The paged KV cache's tensors: one K and one V tensor per attention layer, shaped by the layer itself.

Each :class:`~minivllm.layers.Attention` of the model says how many KV heads of what size it holds on this
rank, so the cache is sized from the model, not from Hugging Face config fields a plugin's architecture
may lack or use differently. Layer ``i``'s K cache is ``[num_blocks, block_size, num_kv_heads, head_dim]``.
With ``kv_cache_dtype="fp8"`` the values are float8 e4m3 (1 byte) and each (token, head) row has a
float32 scale beside it (see ``core/interfaces/attention.py``): about half the bytes of bf16, so about
twice the blocks in the same memory.
"""

from __future__ import annotations

import torch

from minivllm.core.interfaces.attention import FP8_DTYPE, Attention, KVScales


class KVCache:
    def __init__(self, layers: list[Attention], block_size: int, dtype: torch.dtype, fp8: bool, device: torch.device):
        self.layers = layers
        self.block_size = block_size
        self.dtype = FP8_DTYPE if fp8 else dtype
        self.fp8 = fp8
        self.device = device
        self.num_blocks = 0

    @property
    def block_bytes(self) -> int:
        """Bytes of K and V (and their scales) of one block across all layers."""
        elem = torch.empty(0, dtype=self.dtype).element_size()
        per_row = [layer.num_kv_heads * (layer.head_dim * elem + (4 if self.fp8 else 0)) for layer in self.layers]
        return 2 * self.block_size * sum(per_row)

    def allocate(self, num_blocks: int) -> None:
        """(Re)allocate every layer's cache for ``num_blocks`` blocks and bind it to the layer. On the CPU
        the memory is left untouched (``empty``), so pages are mapped only as blocks are written."""
        alloc = torch.zeros if self.device.type == "cuda" else torch.empty
        self.num_blocks = num_blocks
        empty = torch.empty(0)
        for layer in self.layers:
            layer.bind_cache(empty, empty)  # free the old cache first
        for layer in self.layers:
            shape = (num_blocks, self.block_size, layer.num_kv_heads, layer.head_dim)
            scales = None
            if self.fp8:
                scales = KVScales(alloc(shape[:3], device=self.device), alloc(shape[:3], device=self.device))
            layer.bind_cache(
                alloc(shape, dtype=self.dtype, device=self.device),
                alloc(shape, dtype=self.dtype, device=self.device),
                scales,
            )
