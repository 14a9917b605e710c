"""The run report of a causal-LM recipe: perplexity, prefill and decode speed of every deployed artifact.

Every variant's KV-cache ONNX graph runs on ONNX Runtime (CPU, ``recipe.threads``) and on every other available
backend with a ``causal_lm`` session hook (OpenVINO): one case per variant × backend. The reference model also runs
as PyTorch eager fp32 — the product's float baseline — and its own ONNX graph on ONNX Runtime is the runtime
baseline. Per case: held-out perplexity (and bits per byte) through the artifact, prefill ms for ``prompt_tokens``,
decode ms/token and tokens/s over ``new_tokens`` greedy tokens at batch 1 (cache kept), speed-ups vs both baselines
as the median and p10–p90 of per-round ratios (every case in every round, order alternating), file size, the
KV-cache parity recorded at export; for each other size of ``benchmark.generation.batches``, decode tokens/s over
all its sequences with the same paired speed-ups; then the cache vs recompute ratio and a few greedy generations.
Writes ``report.md`` and ``report.json``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from edgekit._io import write_json_atomic, write_text_atomic
from edgekit.pipeline.lm import generation_lengths
from edgekit.pipeline.stages import Variant

logger = logging.getLogger(__name__)

REPORT_SCHEMA = "edgekit-report/1"
EAGER = "PyTorch eager fp32"


def _decoders(chosen: List[Variant], threads: int, context: int) -> Tuple[Dict[str, Any], Dict[str, Variant],
                                                                          Dict[str, str], List[dict]]:
    """``{case: decoder}``: the reference in PyTorch eager (when it has a checkpoint), every ONNX artifact on ORT and
    on each other available causal-LM backend; ``{case: variant}``, ``{case: backend}``, and the skipped
    (variant, backend) pairs with the reason."""
    from edgekit.backends import backend_spec, causal_lm_backends, default_backend
    from edgekit.bench.decode import OnnxDecoder, TorchDecoder
    from edgekit.errors import EdgekitError
    from edgekit.models import load_checkpoint

    ref = chosen[0]
    decoders: Dict[str, Any] = {}
    cases: Dict[str, Variant] = {}
    backends: Dict[str, str] = {}
    if ref.checkpoint:
        decoders[f"{ref.name} ({EAGER})"] = TorchDecoder(load_checkpoint(ref.checkpoint)[0], threads)
        cases[f"{ref.name} ({EAGER})"], backends[f"{ref.name} ({EAGER})"] = ref, default_backend("module", "cpu")
    probes = {b: backend_spec(b).probe() for b in causal_lm_backends()}
    skipped = [{"backend": b, "reason": reason} for b, (ok, reason) in probes.items() if not ok]
    names = [b for b, (ok, _) in probes.items() if ok]
    for v in (v for v in chosen if v.onnx):
        for i, b in enumerate(names):
            case = v.name if i == 0 else f"{v.name} ({backend_spec(b).label})"
            try:
                decoders[case] = OnnxDecoder(v.onnx, threads, context, backend=b)
            except EdgekitError as e:  # e.g. an op this runtime cannot compile; the others still run
                if i == 0:
                    raise
                skipped.append({"backend": b, "variant": v.name, "reason": str(e)[:300]})
                continue
            cases[case], backends[case] = v, b
    return decoders, cases, backends, skipped


def _perplexity_rows(decoders: Dict[str, Any], splits: Any, windows: Optional[int]) -> Dict[str, dict]:
    from edgekit.bench.decode import perplexity

    prep = splits.preprocessing
    rows: Dict[str, dict] = {k: {} for k in decoders}
    for part in ("val", "test"):
        sp = getattr(splits, part)
        blocks = np.concatenate([sp.x[:windows], sp.y[:windows, -1:]], axis=1)
        for k, d in decoders.items():
            r = perplexity(d, blocks, prep.get("n_bytes", {}).get(part), prep.get("n_tokens", {}).get(part))
            rows[k][f"{part}_perplexity"] = r["ppl"]
            rows[k][f"{part}_bits_per_byte"] = r.get("bits_per_byte")
            rows[k][f"{part}_tokens"] = r["tokens"]
    return rows


def _speed_rows(rows: Dict[str, dict], decoders: Dict[str, Any], prompt: np.ndarray, gen: Dict[str, int], rounds: int,
                baselines: Dict[str, str]) -> None:
    """Prefill ms, decode ms/token, tokens/s and paired speed-ups vs each baseline at batch 1, into ``rows``."""
    from edgekit.bench.decode import decode_speed, prefill_speed

    prefill = prefill_speed(decoders, prompt, rounds)
    decode = decode_speed(decoders, prompt[:1], gen["new_tokens"], rounds=rounds)
    paired = _paired(decode, baselines)
    for k in decoders:
        rows[k]["prefill_ms"] = float(np.median(prefill[k]))
        rows[k]["ms_per_token"] = float(np.median(decode[k]))
        rows[k]["tokens_per_s"] = 1000.0 / rows[k]["ms_per_token"]
        rows[k].update(paired[k])


def _paired(ms: Dict[str, np.ndarray], baselines: Dict[str, str]) -> Dict[str, Dict[str, dict]]:
    """``{case: {column: {median, p10, p90}}}``: every case's per-round speed-ups over each baseline."""
    from edgekit.bench.decode import ratios

    by_col = {col: ratios(ms, base) for col, base in baselines.items()}
    return {case: {col: {k: r[case][k] for k in ("median", "p10", "p90")} for col, r in by_col.items()} for case in ms}


def _batch_rows(decoders: Dict[str, Any], prompts: np.ndarray, batches: List[int], new_tokens: int, rounds: int,
                baselines: Dict[str, str]) -> List[dict]:
    """Decode at each batch size but 1: ms per step (one token of every sequence), tokens/s over all sequences,
    paired speed-ups vs the baselines at that batch size."""
    from edgekit.bench.decode import decode_speed

    out = []
    for b in (b for b in batches if b != 1):
        ms = decode_speed(decoders, prompts[np.arange(b) % len(prompts)], new_tokens, rounds=rounds, batch=b)
        paired = _paired(ms, baselines)
        for k in decoders:
            step = float(np.median(ms[k]))
            out.append({"batch": b, "case": k, "ms_per_step": step, "tokens_per_s": b * 1000.0 / step,
                        **paired[k]})
    return out


def _cache_rows(decoders: Dict[str, Any], names: List[str], past: int, rounds: int) -> List[dict]:
    from edgekit.bench.decode import cache_vs_recompute, ratios

    out = []
    for k in dict.fromkeys(names):
        ms = cache_vs_recompute(decoders[k], past=past, rounds=rounds)
        r = ratios({"recompute": ms["recompute"], "cache": ms["cache"]}, "cache")["recompute"]
        out.append({"decoder": k, "past": past, "cache_ms": float(np.median(ms["cache"])),
                    "recompute_ms": float(np.median(ms["recompute"])),
                    "cache_over_recompute": {"median": r["median"], "p10": r["p10"], "p90": r["p90"]}})
    return out


def _samples(decoders: Dict[str, Any], splits: Any, gen: Any, lengths: Dict[str, int]) -> List[dict]:
    from edgekit.bench.decode import greedy

    tok = splits.tokenizer
    test = splits.test.x
    out = []
    for i in range(min(gen.samples, len(test))):
        prompt = test[i * max(1, len(test) // max(1, gen.samples))][None, :lengths["prompt_tokens"]]
        texts = {k: tok.decode(greedy(d, prompt, lengths["sample_tokens"])) for k, d in decoders.items()}
        out.append({"prompt": tok.decode(prompt[0].tolist()), "continuations": texts})
    return out


def lm_benchmark_and_report(recipe: Any, run_dir: Path, variants: Dict[str, Variant], splits: Callable[[], Any],
                            manifest: dict) -> Tuple[Path, List[str]]:
    """Measure every variant of a causal-LM run and write report.md / report.json (see the module docstring)."""
    s = splits()
    gen, rounds = recipe.benchmark.generation, recipe.benchmark.rounds
    chosen = [variants[n] for n in (recipe.benchmark.variants or list(variants)) if n in variants]
    context = int(s.input_shape[0])
    lengths = generation_lengths(gen, context)
    decoders, cases, backends, skipped = _decoders(chosen, recipe.threads, context)
    logger.info(f"LM report: {len(decoders)} decoder(s), perplexity, prefill, decode × {rounds} rounds")
    rows = _perplexity_rows(decoders, s, gen.eval_windows)
    eager, ort_ref = f"{chosen[0].name} ({EAGER})", chosen[0].name
    baselines = {c: b for c, b in (("vs_eager", eager), ("vs_ort_fp32", ort_ref)) if b in decoders}
    prompts = s.test.x[:max(gen.batches), :lengths["prompt_tokens"]]
    _speed_rows(rows, decoders, prompts[:1], lengths, rounds, baselines)
    batch_rows = _batch_rows(decoders, prompts, gen.batches, lengths["new_tokens"], rounds, baselines)
    runtime = backends.get(ort_ref)
    final = next((k for k in reversed(list(decoders)) if k != eager and backends[k] == runtime), eager)
    cache = _cache_rows(decoders, [k for k in (eager, ort_ref, final) if k in decoders],
                        min(gen.past, context - 1), rounds)
    samples = _samples(decoders, s, gen, lengths)
    table = [_row(k, cases[k], backends[k], rows[k], k == eager) for k in decoders]
    headline = _headline(table, rows, final, eager, ort_ref)
    qualified = _qualified(table, eager, ort_ref, recipe.report)
    report = {"schema": REPORT_SCHEMA, "task": "causal-lm", "recipe": recipe.name,
              "description": recipe.description, "baselines": {"eager": eager, "runtime": ort_ref},
              "threads": recipe.threads, "batch": 1, "batches": sorted(set(gen.batches) | {1}),
              "prompt_tokens": int(prompts.shape[1]), "new_tokens": lengths["new_tokens"], "rounds": rounds,
              "variants": table, "batch_decode": batch_rows, "cache_vs_recompute": cache, "samples": samples,
              "headline": headline, "final": final, "load": _load(), "skipped_backends": skipped,
              "gate": {"max_perplexity_rise_pct": recipe.report.max_accuracy_drop,
                       "gate_speedup_b1": recipe.report.gate_speedup.get(1), "qualified": qualified},
              "stages": manifest.get("stages", [])}
    write_json_atomic(run_dir / "report.json", report)
    path = write_text_atomic(run_dir / "report.md", _markdown(recipe, report))
    manifest["report"] = {"markdown": str(path), "json": str(run_dir / "report.json"), "headline": headline,
                          "qualified": qualified}
    return path, headline


def _qualified(table: List[dict], eager: str, ort_ref: str, settings: Any) -> Dict[str, Optional[str]]:
    """The ship gate for LMs (``edgekit run --gate``): per ONNX backend, the fastest artifact whose test perplexity
    is at most ``report.max_accuracy_drop`` percent above the reference's and, with ``report.gate_speedup[1]``, at
    least that much faster than the eager reference at batch 1. ``{ONNX backend: case or None}``."""
    by_case = {t["case"]: t for t in table}
    ref = by_case.get(ort_ref) or by_case.get(eager)
    need = settings.gate_speedup.get(1)
    out: Dict[str, Optional[str]] = {}
    for t in (t for t in table if t["case"] != eager):
        best = out.setdefault(t["backend"], None)
        ok = (100.0 * (t["test_perplexity"] / ref["test_perplexity"] - 1) <= settings.max_accuracy_drop
              and (need is None or (t.get("vs_eager") or {}).get("median", 0.0) >= need))
        if ok and (best is None or t["tokens_per_s"] > by_case[best]["tokens_per_s"]):
            out[t["backend"]] = t["case"]
    return out


def _row(case: str, v: Variant, backend: str, r: dict, eager: bool) -> dict:
    from edgekit.backends import backend_spec

    size = None if eager or not v.onnx else Path(v.onnx).stat().st_size
    parity = None if eager else v.recorded("kv_parity")
    vs_parent = None
    if not eager and "top1_agreement_vs_parent" in v.metrics:
        vs_parent = {"parent": v.parent, "top1_agreement": v.metrics["top1_agreement_vs_parent"],
                     "max_abs_logit_diff": v.metrics.get("max_abs_logit_diff_vs_parent")}
    budget = None if eager else v.meta.get("perplexity_budget")  # MatMuls a perplexity budget kept float
    kept = {"kept_float": v.meta.get("kept_float", []), "all_float": budget["all_float"]} if budget else None
    return {"case": case, "variant": v.name, "backend": backend,
            "artifact": EAGER if eager else f"{backend_spec(backend).label} (KV cache)", "size_bytes": size,
            "params": v.metrics.get("params"), "kv_parity": parity, "vs_parent": vs_parent,
            "perplexity_budget": kept, **r}


def _parity_cell(t: dict) -> str:
    p, q = t.get("kv_parity"), t.get("vs_parent")
    if p:
        return f"KV cache vs PyTorch: {p['max_abs_diff']:.2g} (greedy {p['greedy_match']:.0%})"
    if q:
        return f"vs {q['parent']}: {q['max_abs_logit_diff']:.2g} (top-1 {q['top1_agreement']:.1f}%)"
    return "–"


def _headline(table: List[dict], rows: Dict[str, dict], final: str, eager: str, ort_ref: str) -> List[str]:
    r = rows[final]
    ref = rows.get(ort_ref) or rows.get(eager) or r
    size = next(t["size_bytes"] for t in table if t["case"] == final)
    ref_size = next((t["size_bytes"] for t in table if t["case"] == ort_ref), None)
    parts = [f"{final}: {r['tokens_per_s']:.0f} tokens/s at batch 1"]
    for col, what in (("vs_eager", f"the {EAGER} reference"), ("vs_ort_fp32", "the ORT fp32 reference")):
        if col in r:
            x = r[col]
            parts.append(f"{x['median']:.2f}× {what} (p10–p90 {x['p10']:.2f}–{x['p90']:.2f})")
    d = 100.0 * (r["test_perplexity"] / ref["test_perplexity"] - 1)
    parts.append(f"test perplexity {r['test_perplexity']:.2f} ({d:+.1f}% vs the reference)")
    if size and ref_size:
        parts.append(f"{size / 2**20:.2f} MB ({size / ref_size:.2f}× the reference's fp32 file)")
    return ["; ".join(parts)]


def _load() -> dict:
    from edgekit.bench.decode import load_note

    return load_note()


def _fmt_ratio(x: Optional[dict]) -> str:
    return f"{x['median']:.2f} ({x['p10']:.2f}–{x['p90']:.2f})" if x else "–"


def _markdown(recipe: Any, rep: dict) -> str:
    out = [f"# edgekit report: {recipe.name} (causal LM)", ""]
    if recipe.description:
        out += [recipe.description.strip(), ""]
    out += ["## Headline", ""] + [f"- **{h}**" for h in rep["headline"]] + [""]
    out += [f"Batch 1, {rep['threads']} thread(s), prompt {rep['prompt_tokens']} tokens, {rep['new_tokens']} new "
            f"tokens (greedy, KV cache kept), {rep['rounds']} interleaved rounds (load {rep['load']['loadavg_1m']} on "
            f"{rep['load']['cpus']} CPUs). Speed-ups are medians (p10–p90) of per-round decode ratios: `vs eager` "
            f"divides by {rep['baselines']['eager']}, `vs ORT fp32` by the reference's own KV-cache graph on ONNX "
            "Runtime (the gain of compression without the gain of switching runtime). Every ONNX variant runs on "
            "each available backend that decodes with the cache (one row per variant × backend, all in the same "
            "rounds). Perplexity is measured through each deployed artifact on held-out documents.", ""]
    hdr = ["variant", "artifact", "MB", "val ppl", "test ppl", "test bits/byte", f"prefill ms ({rep['prompt_tokens']})",
           "ms/token", "tokens/s", "vs eager", "vs ORT fp32", "parity: max |Δlogit| (agreement)"]
    out += ["## Variants", "", "| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for t in rep["variants"]:
        cells = [t["case"], t["artifact"], f"{t['size_bytes'] / 2**20:.3f}" if t["size_bytes"] else "–",
                 f"{t['val_perplexity']:.2f}", f"{t['test_perplexity']:.2f}",
                 f"{t['test_bits_per_byte']:.3f}" if t.get("test_bits_per_byte") else "–", f"{t['prefill_ms']:.2f}",
                 f"{t['ms_per_token']:.3f}", f"{t['tokens_per_s']:.0f}", _fmt_ratio(t.get("vs_eager")),
                 _fmt_ratio(t.get("vs_ort_fp32")), _parity_cell(t)]
        out.append("| " + " | ".join(cells) + " |")
    out += _batch_markdown(rep)
    out += _budget_lines(rep["variants"])
    out += ["", "## KV cache vs recomputing the sequence", "",
            "| decoder | past | cache ms | recompute ms | cache / recompute (p10–p90) |", "|---|---|---|---|---|"]
    for c in rep["cache_vs_recompute"]:
        out.append(f"| {c['decoder']} | {c['past']} | {c['cache_ms']:.3f} | {c['recompute_ms']:.3f} | "
                   f"{_fmt_ratio(c['cache_over_recompute'])} |")
    out += ["", "## Greedy samples (test documents)", ""]
    for i, smp in enumerate(rep["samples"]):
        out += [f"### Sample {i + 1}", "", f"Prompt: `{_inline(smp['prompt'])}`", ""]
        out += [f"- {k}: `{_inline(v)}`" for k, v in smp["continuations"].items()] + [""]
    timed = ", ".join(dict.fromkeys(t["artifact"].replace(" (KV cache)", "") for t in rep["variants"]))
    out += [f"Timed on {timed}; the recipe's other targets are not run for causal LMs."]
    out += [f"Not timed on {k['backend']}" + (f" for {k['variant']}" if k.get("variant") else "") +
            f": {_inline(k['reason'])}" for k in rep["skipped_backends"]]
    return "\n".join(out + [""]) + "\n"


def _batch_markdown(rep: dict) -> List[str]:
    """One table per batch size above 1: ms per decode step, tokens/s over all sequences, paired speed-ups."""
    out: List[str] = []
    artifact = {t["case"]: t["artifact"] for t in rep["variants"]}
    for b in sorted({r["batch"] for r in rep["batch_decode"]}):
        out += ["", f"## Decode at batch {b}", "",
                f"{b} sequences of the test documents decoded together (prompt {rep['prompt_tokens']}, "
                f"{rep['new_tokens']} new tokens each); a step makes one token of every sequence and tokens/s counts "
                "them all. Speed-ups are paired per round against the same baselines at this batch size.", "",
                f"| variant | artifact | ms/step | tokens/s ({b} sequences) | vs eager | vs ORT fp32 |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r['case']} | {artifact[r['case']]} | {r['ms_per_step']:.3f} | {r['tokens_per_s']:.0f} | "
                f"{_fmt_ratio(r.get('vs_eager'))} | {_fmt_ratio(r.get('vs_ort_fp32'))} |"
                for r in rep["batch_decode"] if r["batch"] == b]
    return out


def _budget_lines(variants: List[dict]) -> List[str]:
    """One line per variant quantised under a perplexity budget: the weight MatMuls it kept float."""
    rows = list({t["variant"]: t for t in variants if t.get("perplexity_budget")}.values())  # one per variant
    out = ["", "## Weight MatMuls kept float by the perplexity budget", "",
           "Most sensitive first; in brackets the perplexity its quantisation alone cost on the sensitivity windows.",
           ""] if rows else []
    for t in rows:
        b = t["perplexity_budget"]
        kept = ", ".join(f"`{k['node']}` ({k['val_perplexity_cost']:+.3g} ppl)" for k in b["kept_float"])
        out.append(f"- {t['variant']}: {kept or 'none'}" + (" — every weight MatMul float: nothing is quantised"
                                                          if b["all_float"] else ""))
    return out


def _inline(text: str) -> str:
    return text.replace("`", "'").replace("\n", "⏎")


__all__ = ["lm_benchmark_and_report"]
