"""Generation benchmarks for causal LMs: decode tokens/s at batch 1, per-token decode time with the KV cache vs
recomputing the whole sequence, held-out perplexity (and bits per byte) through each deployed artifact.

Every timing is paired and interleaved: each round runs every case once (alternating the order), and a case's
speedup is the median of its per-round ratios against the baseline, with the p10–p90 of those ratios as spread.
Decoders are PyTorch eager modules (:class:`TorchDecoder`) or KV-cache ONNX graphs on any backend with a
``causal_lm`` session hook — ONNX Runtime CPU by default, OpenVINO — (:class:`OnnxDecoder`, alias ``OrtDecoder``);
both keep the cache between steps and decode one sequence (``prefill/step``) or a batch (``prefill_rows/step_rows``).

Example:
    >>> dec = {"torch": TorchDecoder(teacher), "ort": OrtDecoder("teacher.onnx")}
    >>> res = decode_speed(dec, prompt, new_tokens=64, rounds=10)
    >>> ratios(res, "torch")["ort"]["median"]
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from edgekit.errors import ConfigError


class _OneSequence:
    """``prefill`` / ``step`` of one sequence through a decoder's batched ``prefill_rows`` / ``step_rows``."""

    def prefill(self, ids: np.ndarray):
        """Run the prompt ``ids [1, s]``; returns (last logits [vocab], state)."""
        logits, state = self.prefill_rows(ids)
        return logits[0], state

    def step(self, token: int, state):
        """One token after ``state``; returns (logits [vocab], new state)."""
        logits, state = self.step_rows([token], state)
        return logits[0], state


class TorchDecoder(_OneSequence):
    """A PyTorch causal LM decoding with a ``DynamicCache`` (the eager baseline)."""

    def __init__(self, model: Any, threads: Optional[int] = 2):
        import torch

        from edgekit.export.causal_lm import check_causal_lm, kv_layout

        check_causal_lm(model)
        self.model, self.threads, self.torch = model.eval(), threads, torch
        self.max_positions = kv_layout(model.config).max_positions

    def prefill_rows(self, ids: np.ndarray):
        """Run the prompts ``ids [b, s]`` (equal lengths); returns (last logits [b, vocab], state)."""
        from transformers import DynamicCache

        ids = np.asarray(ids, np.int64)
        with self.torch.no_grad():
            cache = DynamicCache(config=self.model.config)
            out = self.model(input_ids=self.torch.from_numpy(ids), past_key_values=cache, use_cache=True)
        return out.logits[:, -1].numpy(), (out.past_key_values, ids.shape[1])

    def step_rows(self, tokens: Any, state):
        """One token per sequence (``tokens [b]``) after ``state``; returns (logits [b, vocab], new state)."""
        cache, n = state
        t = self.torch.from_numpy(np.asarray(tokens, np.int64).reshape(-1, 1))
        with self.torch.no_grad():
            out = self.model(input_ids=t, past_key_values=cache, use_cache=True,
                             position_ids=self.torch.full_like(t, n))
        return out.logits[:, -1].numpy(), (out.past_key_values, n + 1)

    def fork(self, state):
        """A copy of ``state`` that a step may extend without changing ``state``."""
        import copy

        return copy.deepcopy(state[0]), state[1]

    def full(self, ids: np.ndarray) -> np.ndarray:
        """Logits ``[s, vocab]`` of the whole sequence without a cache (recompute)."""
        with self.torch.no_grad():
            return self.model(input_ids=self.torch.from_numpy(np.asarray(ids, np.int64)), use_cache=False
                              ).logits[0].numpy()


class OnnxDecoder(_OneSequence):
    """A KV-cache ONNX graph on a backend with a ``causal_lm`` session hook (``backend`` None: the default, ONNX
    Runtime CPU; e.g. OpenVINO: any name of ``edgekit.backends.causal_lm_backends()``), same interface as
    :class:`TorchDecoder`. ``max_positions`` 0: the context the file records (0 when it records none); ``layout``:
    the file's :class:`~edgekit.export.causal_lm.KVLayout` when already read (None: read it).

    Example:
        >>> dec = OnnxDecoder("lm.int4.onnx", threads=1, backend=causal_lm_backends()[-1])
    """

    def __init__(self, path: Any, threads: Optional[int] = 2, max_positions: int = 0, backend: Optional[str] = None,
                 layout: Any = None):
        from edgekit.export.causal_lm import CausalLMSession

        self.lm = CausalLMSession(path, layout, threads=threads, backend=backend)
        self.backend = self.lm.backend
        self.max_positions = max_positions or self.lm.layout.max_positions
        self.empty = self.lm.layout.empty_past()

    def prefill_rows(self, ids: np.ndarray):
        ids = np.asarray(ids, np.int64)
        logits, past = self.lm.step(ids, self.empty if len(ids) == 1 else self.lm.layout.empty_past(len(ids)))
        return logits[:, -1], past

    def step_rows(self, tokens: Any, state):
        logits, past = self.lm.step(np.asarray(tokens, np.int64).reshape(-1, 1), state)
        return logits[:, -1], past

    def fork(self, state):
        return state  # the backends return new present tensors; the past is never changed in place

    def full(self, ids: np.ndarray) -> np.ndarray:
        return self.lm.step(np.asarray(ids, np.int64), self.empty)[0][0]


#: the KV-cache ONNX decoder on the default backend (ONNX Runtime CPU); kept for its callers
OrtDecoder = OnnxDecoder


def _check_length(decoder: Any, n: int, what: str) -> None:
    limit = getattr(decoder, "max_positions", 0)
    if limit and n > limit:
        raise ConfigError(f"{what}: {n} tokens exceed the model's context of {limit} positions "
                          f"(shorten the prompt or lower max_new_tokens)")


def generate(decoder: Any, prompt: np.ndarray, max_new_tokens: int, top_k: Optional[int] = None, seed: int = 0
             ) -> List[int]:
    """Continue ``prompt [1, s]`` with the cache: greedy (``top_k`` None) or top-k sampling seeded by ``seed``.

    Example:
        >>> generate(OrtDecoder("lm.int4.onnx"), np.array([[3, 17, 42]]), 8, top_k=20, seed=1)
    """
    if max_new_tokens <= 0:
        raise ConfigError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1 (or None for greedy), got {top_k}")
    prompt = np.asarray(prompt, np.int64)
    if prompt.ndim != 2 or prompt.shape[0] != 1 or prompt.shape[1] == 0:
        raise ConfigError(f"prompt must be token ids of shape [1, s>0], got {list(prompt.shape)}")
    _check_length(decoder, prompt.shape[1] + max_new_tokens, "prompt + max_new_tokens")
    rng = np.random.default_rng(seed)
    logits, state = decoder.prefill(prompt)
    out: List[int] = []
    while True:
        if top_k is None:
            tok = int(np.argmax(logits))
        else:
            top = np.argpartition(logits, -top_k)[-top_k:] if top_k < len(logits) else np.arange(len(logits))
            p = np.exp(logits[top] - logits[top].max())
            tok = int(top[rng.choice(len(top), p=p / p.sum())])
        out.append(tok)
        if len(out) == max_new_tokens:
            return out
        logits, state = decoder.step(tok, state)


def greedy(decoder: Any, prompt: np.ndarray, max_new_tokens: int) -> List[int]:
    """Greedy continuation of ``prompt [1, s]`` with the cache; returns the new token ids.

    Example:
        >>> greedy(OrtDecoder("lm.onnx"), np.array([[3, 17, 42]]), 8)
    """
    return generate(decoder, prompt, max_new_tokens)


def interleaved(fns: Dict[str, Callable[[], float]], rounds: int = 10, warmup: int = 2) -> Dict[str, np.ndarray]:
    """Run every ``fn`` (returning its own measured milliseconds) once per round, alternating the order each round.

    Returns:
        ``{name: ms per round}``.
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    ms: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            ms[n].append(fns[n]())
    return {n: np.asarray(v) for n, v in ms.items()}


def ratios(ms: Dict[str, np.ndarray], baseline: str) -> Dict[str, dict]:
    """Per-round speedups ``baseline_ms / case_ms``: median and p10–p90 for every case (>1: faster than baseline).

    Example:
        >>> ratios({"a": np.array([2., 2.]), "b": np.array([1., 0.5])}, "a")["b"]["median"]
        3.0
    """
    if baseline not in ms:
        raise ConfigError(f"baseline '{baseline}' is not among the cases {list(ms)}")
    out = {}
    for n, v in ms.items():
        r = ms[baseline] / v
        lo, hi = np.percentile(r, [10, 90])
        out[n] = {"median": float(np.median(r)), "p10": float(lo), "p90": float(hi), "ms": float(np.median(v))}
    return out


def prefill_speed(decoders: Dict[str, Any], prompt: np.ndarray, rounds: int = 10, warmup: int = 1
                  ) -> Dict[str, np.ndarray]:
    """Milliseconds to run the prompt ``prompt [1, s]`` (prefill, empty cache) per round, interleaved across
    ``decoders``.

    Example:
        >>> ms = prefill_speed({"ort": OnnxDecoder("lm.onnx")}, np.arange(32)[None], rounds=5)
    """
    prompt = np.asarray(prompt, np.int64)
    for name, d in decoders.items():
        _check_length(d, prompt.shape[1], f"decoder '{name}'")

    def timed(d: Any) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            d.prefill(prompt)
            return (time.perf_counter() - t0) * 1000.0
        return run

    return interleaved({n: timed(d) for n, d in decoders.items()}, rounds, warmup)


def decode_speed(decoders: Dict[str, Any], prompt: np.ndarray, new_tokens: int = 64, rounds: int = 10,
                 warmup: int = 1, batch: int = 1) -> Dict[str, np.ndarray]:
    """Milliseconds per decode step (greedy, cache kept, prefill excluded) per round, for ``batch`` sequences at
    once: one step makes one token of every sequence, so tokens/s is ``batch * 1000 / ms`` (at batch 1 the ms are
    per token). The prompt's rows are the sequences' prompts (repeated when it has fewer than ``batch``).

    Example:
        >>> ms = decode_speed({"ort": OnnxDecoder("lm.onnx")}, np.array([[1, 2, 3]]), 16, rounds=3, batch=4)
        >>> 4 * 1000 / ms["ort"].mean()        # tokens/s over the 4 sequences
    """
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    prompt = np.asarray(prompt, np.int64)
    prompt = prompt[np.arange(batch) % prompt.shape[0]]
    for name, d in decoders.items():
        _check_length(d, prompt.shape[1] + new_tokens, f"decoder '{name}'")

    def timed(d: Any) -> Callable[[], float]:
        def run() -> float:
            logits, state = d.prefill_rows(prompt)
            tok = logits.argmax(-1)
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                logits, state = d.step_rows(tok, state)
                tok = logits.argmax(-1)
            return (time.perf_counter() - t0) * 1000.0 / new_tokens
        return run

    return interleaved({n: timed(d) for n, d in decoders.items()}, rounds, warmup)


def cache_vs_recompute(decoder: Any, past: int = 128, rounds: int = 10, inner: int = 5, seed: int = 0
                       ) -> Dict[str, np.ndarray]:
    """Per-token ms at past length ``past``: one step with the cache vs the full ``past + 1`` sequence recomputed.

    Returns:
        ``{"cache": ms per round, "recompute": ms per round}`` (each the mean of ``inner`` calls).
    """
    _check_length(decoder, past + 1, "past + 1")
    ids = np.random.default_rng(seed).integers(0, 100, (1, past + 1)).astype(np.int64)
    _, state = decoder.prefill(ids[:, :past])
    tok = int(ids[0, past])

    def cached() -> float:
        total = 0.0
        for _ in range(inner):
            s = decoder.fork(state)  # the same past every call (a torch cache grows in place)
            t0 = time.perf_counter()
            decoder.step(tok, s)
            total += time.perf_counter() - t0
        return total * 1000.0 / inner

    def recompute() -> float:
        t0 = time.perf_counter()
        for _ in range(inner):
            decoder.full(ids)
        return (time.perf_counter() - t0) * 1000.0 / inner

    return interleaved({"cache": cached, "recompute": recompute}, rounds, warmup=1)


def perplexity(decoder: Any, blocks: np.ndarray, n_bytes: Optional[int] = None, n_tokens: Optional[int] = None
               ) -> dict:
    """Perplexity of ``decoder`` on windows ``blocks [N, L + 1]`` (inputs ``[:, :-1]``, targets ``[:, 1:]``).

    With ``n_bytes`` and ``n_tokens`` (the split's text bytes and tokens) also bits per byte.

    Example:
        >>> perplexity(OrtDecoder("lm.int4.onnx"), corpus.blocks("val"))["ppl"]
    """
    blocks = np.asarray(blocks, np.int64)
    if blocks.ndim != 2 or blocks.shape[1] < 2:
        raise ConfigError(f"blocks must be [N, L + 1] token windows, got shape {list(blocks.shape)}")
    _check_length(decoder, blocks.shape[1] - 1, "window")
    from edgekit.export.causal_lm import token_nll

    nll, n = 0.0, 0
    for w in blocks:
        nll += token_nll(decoder.full(w[None, :-1]), w[1:])
        n += len(w) - 1
    out = {"nll": nll / n, "ppl": math.exp(nll / n), "tokens": n}
    if n_bytes and n_tokens:
        out["bits_per_byte"] = nll / n * n_tokens / n_bytes / math.log(2)
    return out


def load_note() -> Dict[str, float]:
    """The 1-minute load average and CPU count (a shared machine makes latencies noisy; record it)."""
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count() or 0}


def markdown_table(rows: List[dict], columns: List[str]) -> str:
    """A markdown table of ``rows`` (dicts) in ``columns`` order; floats to 3 significant figures."""
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


__all__ = ["OnnxDecoder", "OrtDecoder", "TorchDecoder", "cache_vs_recompute", "decode_speed", "generate", "greedy",
           "interleaved", "load_note", "markdown_table", "perplexity", "prefill_speed", "ratios"]
