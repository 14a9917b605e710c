"""Preflight checks of causal-LM recipes (part of :func:`edgekit.pipeline.preflight.preflight`): caught before any
work, each with its field path and what is allowed.

- stages that only work on classifiers (sparsity, static/QAT quantisation, compile) in an LM recipe, attention/hint
  transfer in an LM distillation (per-token logit KD only), and pruning other than of heads / FFN neurons / layers
  (channel ratios, sparsity patterns, measured speed targets);
- an LM model with classification data or LM data with a classifier;
- an INT4 block size that does not divide the hidden / FFN size of a model the recipe builds (or prunes);
- a prompt (+ new tokens) longer than the context;
- SmoothQuant on a model without Linear layers, and the LM-only quantisation fields (``smoothquant``,
  ``max_perplexity_increase``) in a classifier recipe (alpha and the budget's bounds are schema checks);
- a tokenizer whose vocabulary does not match the model's (checked with the model's output size).

Example:
    >>> lm_problems(recipe, splits)
    ["stages[2].type: 'qat' is not supported for causal-lm recipes ..."]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List

from edgekit.pipeline.lm import generation_lengths

#: stage types a causal-LM recipe can run
LM_STAGES = ("train", "distill", "prune", "export", "int4", "int8_dynamic")
#: datasets of next-token windows (edgekit.data.text_lm)
LM_DATASETS = ("pydoc_lm", "text_lm")
#: fields of the int8_dynamic / int4 stages that only a causal-LM recipe can use
_LM_ONLY_FIELDS = ("smoothquant", "max_perplexity_increase")


def model_is_lm(recipe: Any) -> bool:
    """The recipe's reference model is a causal LM (``task: causal-lm``, ``gpt_lm``, or ``hf`` with that task)."""
    m = recipe.model
    if m.hf:
        return m.task == "causal-lm"
    return m.name == "gpt_lm" or (m.name == "hf" and m.kwargs.get("task") == "causal-lm")


def is_lm_recipe(recipe: Any) -> bool:
    """A causal-LM recipe: an LM model or next-token data."""
    return model_is_lm(recipe) or recipe.data.name in LM_DATASETS


def static_problems(recipe: Any) -> List[str]:
    """Problems visible from the recipe alone (no data, no model)."""
    if not is_lm_recipe(recipe):
        return [f"stages[{i}].{k}: needs a causal-LM recipe (it measures next-token perplexity / calibrates on token "
                f"windows through a KV-cache graph; data.name: {' | '.join(LM_DATASETS)}); remove it"
                for i, st in enumerate(recipe.stages) if st.type in ("int4", "int8_dynamic")
                for k in _LM_ONLY_FIELDS if getattr(st, k, None) is not None]
    problems = []
    if model_is_lm(recipe) != (recipe.data.name in LM_DATASETS):
        problems.append(f"model/data: a causal LM needs next-token data (data.name: {' | '.join(LM_DATASETS)}) and "
                        f"next-token data a causal LM (model.task: causal-lm or model.name: gpt_lm); got model "
                        f"{recipe.model.name or recipe.model.hf or recipe.model.checkpoint or recipe.model.onnx} "
                        f"with data '{recipe.data.name}'")
    for i, st in enumerate(recipe.stages):
        if st.type not in LM_STAGES:
            problems.append(f"stages[{i}].type: '{st.type}' is not supported for causal-lm recipes (it works on "
                            f"classifiers); allowed: {', '.join(LM_STAGES)}")
        elif st.type == "export" and st.exporter != "torchscript":
            problems.append(f"stages[{i}].exporter: causal LMs export with the KV cache through the torchscript "
                            f"exporter only, got '{st.exporter}'")
        elif st.type == "prune":
            problems.extend(_prune_problems(i, st))
        elif st.type == "distill":
            for key in ("attention", "hints"):
                if getattr(st, key).enabled:
                    problems.append(f"stages[{i}].{key}: feature transfer is not supported for causal LMs; use "
                                    "the per-token logit KD (temperature, alpha) only")
    context = (recipe.data.shape or [128])[0]
    lengths = generation_lengths(recipe.benchmark.generation, context)
    for what, n in (("prompt_tokens + new_tokens", lengths["prompt_tokens"] + lengths["new_tokens"]),
                    ("prompt_tokens + sample_tokens", lengths["prompt_tokens"] + lengths["sample_tokens"])):
        if n > context:
            problems.append(f"benchmark.generation: {what} = {n} is longer than the context of {context} tokens "
                            "(data.shape); shorten the prompt or generate fewer tokens")
    return problems


def _prune_problems(i: int, st: Any) -> List[str]:
    """A causal LM is pruned by heads / FFN neurons / layers (decoder layouts of edgekit.models.heads) only."""
    if st.method != "structured":
        return [f"stages[{i}].method: '{st.method}' is not supported for causal LMs; prune heads / ffn / layers / "
                "depth (method: structured)"]
    if not st.transformer:
        given = [k for k in ("ratio", "macs_target", "per_layer_ratios") if getattr(st, k)]
        return [f"stages[{i}]: channel pruning ({', '.join(given) or 'ratio'}) is not supported for causal LMs; "
                "give heads (fraction of attention heads removed per layer), ffn (fraction of FFN neurons), "
                "layers (decoder blocks removed) or depth (blocks kept); macs_target may scale heads / ffn"]
    if st.speedup_target is not None:
        return [f"stages[{i}].speedup_target: measured speed targets are not supported for causal LMs (candidates "
                "would be timed without the KV cache); use macs_target with heads / ffn"]
    return []


def _pruned_sizes(model: Any, st: Any) -> Dict[int, str]:
    """``{input size: a layer}`` of the attention output / FFN down projections after the prune stage ``st``."""
    from edgekit.models.heads import transformer_blocks
    from edgekit.techniques.prune._transformer import ffn_kept, heads_removed

    cfg = st.resolved()
    out: Dict[int, str] = {}
    for b in transformer_blocks(model):
        if cfg.heads and b.layout is not None:
            units, per = (b.kv_heads, b.heads // b.kv_heads) if b.grouped else (b.heads, 1)
            out.setdefault((units - heads_removed(units, cfg.heads)) * per * b.head_size, b.out)
        if cfg.ffn and b.ffn is not None:
            out.setdefault(ffn_kept(b.intermediate, cfg.ffn, cfg.round_to), b.ffn[-1])
    return out


def _prunable_problems(recipe: Any, models: Dict[str, Any]) -> List[str]:
    """Each prune stage's input (the reference or a distilled student) has decoder heads / FFN / layers that
    edgekit can prune with the stage's fields (the checks of the prune technique, run on the built model)."""
    from edgekit.errors import EdgekitError
    from edgekit.techniques.prune._transformer import check_blocks

    keys, latest, problems = {"reference": "model"}, "model", []
    for i, st in enumerate(recipe.stages):
        if st.type == "distill":
            latest = f"stages[{i}].student"
            keys[st.name or f"stage{i}"] = latest
        elif st.type == "prune" and st.method == "structured" and st.transformer:
            key = keys.get(st.input) if st.input else latest
            if key in models:
                try:
                    check_blocks(models[key], st.resolved(), [])
                except EdgekitError as e:
                    problems.append(f"stages[{i}]: {e}")
            latest = ""  # a pruned variant: not built here
    return problems


def _input_sizes(model: Any, embeddings: bool) -> Dict[int, str]:
    """``{input size: a layer with it}`` of every weight INT4 would quantise (Linear / GPT-2 Conv1D / Embedding)."""
    import torch.nn as nn

    out: Dict[int, str] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out.setdefault(m.in_features, name)
        elif type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None:
            out.setdefault(int(m.weight.shape[0]), name)
        elif embeddings and isinstance(m, nn.Embedding):
            out.setdefault(m.embedding_dim, name)
    return out


def _built_models(recipe: Any, splits: Any) -> Dict[str, Any]:
    """The reference (unless it is an ONNX file or a directory edgekit would create) and every distill student."""
    from edgekit.models import create_model
    from edgekit.pipeline.model_source import build_module, zoo_kwargs

    models: Dict[str, Any] = {}
    src = recipe.model
    if src.hf and src.config and not Path(src.hf).exists():
        kwargs = {"config": src.config, "task": src.task}
        models["model"] = create_model("hf", **zoo_kwargs("hf", kwargs, splits))
    elif not src.onnx:
        models["model"] = build_module(src, splits)  # also checks the model fits the data (tokenizer vs vocab)
    for i, st in enumerate(recipe.stages):
        if st.type == "distill":
            spec = dict(st.student)
            arch = spec.pop("name")
            models[f"stages[{i}].student"] = create_model(arch, **zoo_kwargs(arch, spec, splits))
    return models


def data_problems(recipe: Any, splits: Callable[[], Any]) -> List[str]:
    """Problems needing the data and the models: tokenizer vs vocabulary, INT4 block sizes vs hidden sizes."""
    if not is_lm_recipe(recipe) or static_problems(recipe):
        return []
    from edgekit.errors import EdgekitError

    try:
        models = _built_models(recipe, splits())
    except EdgekitError as e:
        return [str(e)]
    problems = _prunable_problems(recipe, models)
    prunes = [(j, p) for j, p in enumerate(recipe.stages) if p.type == "prune"]
    for i, st in enumerate(recipe.stages):
        if st.type == "int8_dynamic" and st.smoothquant is not None:
            problems += [f"stages[{i}].smoothquant: {where} has no Linear layer (nn.Linear / GPT-2 Conv1D) to "
                         "smooth; SmoothQuant needs MatMuls with constant weights fed by activations — remove "
                         "smoothquant" for where, m in models.items() if not _input_sizes(m, False)]
        if st.type != "int4":
            continue
        for where, m in models.items():
            sizes = _input_sizes(m, st.embeddings)
            for j, p in prunes:
                sizes.update({k: f"{n} after stages[{j}] (prune; its round_to sets the FFN width)"
                              for k, n in _pruned_sizes(m, p).items()})
            bad = {k: n for k, n in sizes.items() if k % st.block_size}
            if bad:
                from edgekit.techniques.quantize.int4 import _BLOCK_SIZES

                fit = [b for b in _BLOCK_SIZES if all(k % b == 0 for k in sizes)]
                problems.append(f"stages[{i}].block_size: {st.block_size} does not divide the input size(s) "
                                f"{sorted(bad)} of {where} (e.g. layer {next(iter(bad.values()))}); block sizes "
                                f"that fit every model of this recipe: {fit or 'none'}")
    return problems


__all__ = ["LM_DATASETS", "LM_STAGES", "data_problems", "is_lm_recipe", "model_is_lm", "static_problems"]
