"""Precomputed teacher outputs, looked up by the content of each input sample.

``fit`` hands a loss function the batch tensors, not their indices; when augmentation is off every
training input is bit-identical to a row of the training array, so a digest of the row's bytes is an
exact key. Identical inputs share a key, which is harmless: the frozen teacher gives them identical outputs.

Example:
    >>> cache = TeacherCache.build(teacher, splits.train.x)
    >>> logits = cache.lookup(x_batch)       # None when any row is unknown (e.g. augmented)
"""
from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn

from edgekit.core.tensors import Inputs, call_module, num_samples, prediction, row_bytes, take, to_numpy, to_torch


def row_keys(x: Inputs) -> list:
    """A 16-byte BLAKE2b digest of each sample's bytes (of every named input's row for named inputs)."""
    return [hashlib.blake2b(row, digest_size=16).digest() for row in row_bytes(x)]


class TeacherCache:
    """Teacher logits (and optional per-sample extras, e.g. attention maps) keyed by input digest."""

    def __init__(self, keys: list, logits: torch.Tensor, extras: Optional[Dict[str, torch.Tensor]] = None,
                 seconds: float = 0.0):
        self.index = {k: i for i, k in enumerate(keys)}
        self.logits = logits
        self.extras = extras or {}
        self.build_seconds = seconds
        self.hits = 0
        self.misses = 0

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: nn.Module, x: Inputs, batch_size: int = 256,
              extras_fn: Optional[Callable[[], Dict[str, torch.Tensor]]] = None) -> TeacherCache:
        """Run ``teacher`` (eval mode) once over ``x``.

        Args:
            extras_fn: called after each batch's forward pass; returns per-sample tensors to cache too.
        """
        t0 = time.perf_counter()
        teacher.eval()
        logits, extras = [], {}
        for i in range(0, num_samples(x), batch_size):
            logits.append(prediction(call_module(teacher, to_torch(take(x, slice(i, i + batch_size))))).detach())
            for k, v in (extras_fn() if extras_fn else {}).items():
                extras.setdefault(k, []).append(v.detach())
        out = torch.cat(logits) if logits else torch.empty(0)
        return cls(row_keys(x), out, {k: torch.cat(v) for k, v in extras.items()}, time.perf_counter() - t0)

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, x: Any):
        """``(logits, extras)`` for the batch ``x`` (a tensor or named tensors), or None if any sample is not in
        the cache."""
        rows = []
        device = next(iter(x.values())).device if isinstance(x, dict) else x.device
        for k in row_keys(to_numpy(x)):
            i = self.index.get(k)
            if i is None:
                self.misses += 1
                return None
            rows.append(i)
        self.hits += 1
        idx = torch.as_tensor(rows, dtype=torch.long)
        return self.logits[idx].to(device), {k: v[idx].to(device) for k, v in self.extras.items()}

    def stats(self) -> dict:
        """Batches served from the cache (hits), batches that ran the teacher (misses), build time."""
        return {"samples": len(self), "hits": self.hits, "misses": self.misses,
                "build_seconds": round(self.build_seconds, 3)}
