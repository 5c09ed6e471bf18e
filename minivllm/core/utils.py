"""Small helpers the core, the layers and the plugins share."""

import contextlib

import torch


def cdiv(n: int, d: int) -> int:
    """``ceil(n / d)`` for positive ``d``, in integers: how many blocks of ``d`` hold ``n`` items."""
    return -(-n // d)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Tensors created inside (a model's parameters, say) default to ``dtype``."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
