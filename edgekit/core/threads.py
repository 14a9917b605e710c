"""Scoped PyTorch thread counts: set for a block of work, restored afterwards (no process-wide side effect)."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (``None`` = leave as is), then restore the previous count.

    Example:
        >>> with torch_threads(2):
        ...     fit(model, splits.train, splits.val)
    """
    import torch

    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
