"""Causal language models in a recipe (``model.task: causal-lm`` / LM data): export with the KV cache, perplexity.

The stages call these where a classifier would be exported with :func:`edgekit.export.export_onnx` and measured by
accuracy: an LM is exported as one KV-cache graph (:func:`edgekit.export.causal_lm.export_causal_lm`, parity against
PyTorch recorded in the artifact's sidecar) and measured by held-out perplexity (and bits per byte) through the
deployed artifact (:func:`edgekit.bench.decode.perplexity` on an ``OrtDecoder``).

Example:
    >>> path = export_lm(model, "stage/student.onnx", threads=1)
    >>> read_sidecar(path)["kv_parity"]["max_abs_diff"] < 1e-3
    True
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Optional

from edgekit._io import write_sidecar
from edgekit.errors import ExportError

TASK = "causal-lm"
#: windows per split that perplexity reads during stages (None: every window, as the report)
STAGE_WINDOWS: Optional[int] = None


def is_lm(splits: Any) -> bool:
    """True when the data is next-token windows (a causal LM recipe)."""
    return getattr(splits, "task", None) == TASK


def export_lm(model: Any, out_path: str | Path, *, threads: Optional[int] = 1, atol: float = 1e-3,
              opset: int = 17) -> Path:
    """Export a causal LM with past key/values (one graph for prefill and decode) and check it against PyTorch.

    The parity (prefill + decode steps with the cache vs the PyTorch full forward, greedy agreement) goes to the
    artifact's sidecar under ``kv_parity``, with the cache layout under ``kv_cache``.

    Raises:
        ExportError: the export fails, or its logits differ from PyTorch's by more than ``atol``.
    """
    from edgekit.export.causal_lm import check_kv_parity, export_causal_lm

    m = copy.deepcopy(model)  # export prepares the model in place (eager attention, Conv1D -> Linear)
    layout = export_causal_lm(m, out_path, opset=opset)
    prompt = max(1, min(8, layout.max_positions - 4))
    parity = check_kv_parity(m, out_path, prompt_len=prompt, steps=min(4, layout.max_positions - prompt),
                             threads=threads)
    if not parity["max_abs_diff"] <= atol:
        Path(out_path).unlink(missing_ok=True)
        raise ExportError(f"{Path(out_path).name}: KV-cache graph differs from PyTorch by "
                          f"{parity['max_abs_diff']:.3g} (> atol {atol}) on {parity['steps']} decode steps")
    write_sidecar(out_path, {"task": TASK, "kv_parity": parity,
                             "kv_cache": {"layers": layout.n_layers, "kv_heads": layout.kv_heads,
                                          "head_dim": layout.head_dim, "vocab_size": layout.vocab_size,
                                          "max_positions": layout.max_positions}})
    return Path(out_path)


def generation_lengths(gen: Any, context: int) -> Dict[str, int]:
    """``{prompt_tokens, new_tokens, sample_tokens}`` of ``benchmark.generation``, defaults filled for ``context``."""
    prompt = gen.prompt_tokens or max(1, min(16, context // 4))
    room = max(1, context - prompt)
    return {"prompt_tokens": prompt, "new_tokens": gen.new_tokens or min(32, room),
            "sample_tokens": gen.sample_tokens or min(16, room)}


def agreement(parent_onnx: str | Path, onnx_path: str | Path, splits: Any, threads: Optional[int],
              windows: int = 16) -> Dict[str, float]:
    """How closely a quantised KV-cache graph follows its float parent on the first ``windows`` test windows:
    ``{"top1_agreement_vs_parent": % of positions with the same next token, "max_abs_logit_diff_vs_parent"}``."""
    import numpy as np

    a, b = decoder(str(parent_onnx), threads), decoder(str(onnx_path), threads)
    same, total, diff = 0, 0, 0.0
    for w in splits.test.x[:windows]:
        la, lb = a.full(w[None]), b.full(w[None])
        same += int((la.argmax(-1) == lb.argmax(-1)).sum())
        total += la.shape[0]
        diff = max(diff, float(np.abs(la - lb).max()))
    return {"top1_agreement_vs_parent": round(100.0 * same / max(1, total), 2),
            "max_abs_logit_diff_vs_parent": round(diff, 4)}


def decoder(model_or_path: Any, threads: Optional[int], max_positions: int = 0) -> Any:
    """A decoder (``prefill/step/full``) over a PyTorch causal LM or a KV-cache ONNX file."""
    from edgekit.bench.decode import OrtDecoder, TorchDecoder

    if isinstance(model_or_path, (str, Path)):
        return OrtDecoder(model_or_path, threads, max_positions)
    return TorchDecoder(model_or_path, threads)


def perplexities(model_or_path: Any, splits: Any, threads: Optional[int], parts=("val", "test"),
                 windows: Optional[int] = STAGE_WINDOWS, suffix: str = "") -> Dict[str, float]:
    """``{<split>_perplexity<suffix>, <split>_bits_per_byte<suffix>}`` of a PyTorch LM or a KV-cache ONNX file on
    the first ``windows`` windows of each held-out split (all of them with None)."""
    import numpy as np

    from edgekit.bench.decode import perplexity

    dec = decoder(model_or_path, threads)
    out: Dict[str, float] = {}
    prep = splits.preprocessing
    for part in parts:
        sp = getattr(splits, part)
        x, y = sp.x[:windows], sp.y[:windows]
        blocks = np.concatenate([x, y[:, -1:]], axis=1)
        n_bytes, n_tokens = prep.get("n_bytes", {}).get(part), prep.get("n_tokens", {}).get(part)
        r = perplexity(dec, blocks, n_bytes, n_tokens)
        out[f"{part}_perplexity{suffix}"] = round(r["ppl"], 4)
        if "bits_per_byte" in r:
            out[f"{part}_bits_per_byte{suffix}"] = round(r["bits_per_byte"], 4)
    return out


__all__ = ["STAGE_WINDOWS", "TASK", "agreement", "decoder", "export_lm", "generation_lengths", "is_lm", "perplexities"]
