"""Integer arithmetic the core, the layers and the plugins share."""


def cdiv(n: int, d: int) -> int:
    """``ceil(n / d)`` for positive ``d``, in integers: how many blocks of ``d`` hold ``n`` items."""
    return -(-n // d)
