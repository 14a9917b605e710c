"""The run report: every variant on every target vs the float baseline, with diagnostics and parity.

Writes ``report.md`` and ``report.json`` (plus ``bench/`` with the raw benchmark and plots) into the run directory.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgekit._io import write_json_atomic, write_text_atomic
from edgekit.bench.results import format_accuracy_delta
from edgekit.errors import BackendUnavailableError
from edgekit.pipeline.diagnostics import artifact_parity, scratch_section, step_diagnostics
from edgekit.pipeline.ship_gate import (
    CI_LEVEL,
    format_speedup_ci,
    gate_failures,
    measured_efficiency,
    ratio_ci,
    slower_than_parent,
    step_ratios,
    variant_flags,
)
from edgekit.pipeline.stages import Variant

logger = logging.getLogger(__name__)

REPORT_SCHEMA = "edgekit-report/1"


def check_required_targets(recipe: Any) -> List[dict]:
    """Probe every target; raise for an unavailable ``required: true`` one, return the skipped others."""
    from edgekit.backends import probe_backend

    skipped = []
    for t in recipe.targets:
        ok, reason = probe_backend(t.backend)
        if not ok:
            if t.required:
                raise BackendUnavailableError(f"target '{t.backend}' is required by the recipe but unavailable: "
                                              f"{reason}")
            skipped.append({"backend": t.backend, "reason": reason})
    return skipped


def benchmark_and_report(recipe: Any, run_dir: Path, variants: Dict[str, Variant], splits: Callable[[], Any],
                         manifest: dict) -> Tuple[Path, List[str]]:
    """Benchmark the run's variants on the recipe's targets and write report.md / report.json."""
    from edgekit.bench import ModelSpec, benchmark
    from edgekit.bench.pairs import backend_pairs
    from edgekit.bench.specs import variant_artifacts
    from edgekit.pipeline.lm import is_lm

    if is_lm(splits()):  # KV-cache graphs: perplexity, prefill and decode tokens/s instead of latency/accuracy
        from edgekit.pipeline.report_lm import lm_benchmark_and_report

        return lm_benchmark_and_report(recipe, run_dir, variants, splits, manifest)

    skipped = check_required_targets(recipe)
    backends = [t.backend for t in recipe.targets if t.backend not in {s["backend"] for s in skipped}]
    chosen = [variants[n] for n in (recipe.benchmark.variants or list(variants)) if n in variants]
    s = splits()
    data = s.test if (recipe.benchmark.accuracy and s.labelled) else None
    specs = [ModelSpec(v.name, variant_artifacts(v), tuple(s.input_shape)) for v in chosen]
    base_backend = float_baseline_backend(backends, chosen[0])
    logger.info(f"benchmark: {len(specs)} variant(s) × {', '.join(backends)} × batch {recipe.benchmark.batches}")
    bench = benchmark(specs, backends=backends, batches=recipe.benchmark.batches, threads=recipe.threads,
                      warmup=recipe.benchmark.warmup, iters=recipe.benchmark.iters, min_time=recipe.benchmark.min_time,
                      rounds=recipe.benchmark.rounds, baseline=(chosen[0].name, base_backend), data=data,
                      ci_target=recipe.benchmark.ci_target, max_seconds=recipe.benchmark.max_time,
                      out_dir=run_dir / "bench", plots=recipe.report.plots, input_shape=tuple(s.input_shape))
    rows = bench.rows
    findings = step_diagnostics({v.name: v for v in chosen}, rows, recipe.report.min_speedup,
                                recipe.report.min_int8_coverage)
    parity = artifact_parity({v.name: v for v in chosen}, s.test.x, s.test.y if s.labelled else None, backends,
                             recipe.threads)
    flags = variant_flags(chosen, rows, s.labelled, getattr(s, "num_classes", None), recipe.report.max_accuracy_drop)
    gate = gate_failures(rows, recipe.report.gate_speedup)
    blocked = {k: gate.get(k, []) + why for k, why in slower_than_parent(chosen, rows).items()}
    warnings = timing_warnings(bench, rows)
    # INT8 slower than its parent is judged per backend: it may still be the fastest qualifying file elsewhere
    headline, qualified = _headline(chosen, rows, base_backend, s.labelled,
                                    variant_flags(chosen, rows, s.labelled, getattr(s, "num_classes", None),
                                                  recipe.report.max_accuracy_drop, speed=False),
                                    warnings, {**gate, **blocked})
    pairs = backend_pairs(rows)
    report = {"schema": REPORT_SCHEMA, "recipe": recipe.name, "description": recipe.description,
              "baseline": {"variant": chosen[0].name, "backend": base_backend,
                           "meaning": _baseline_meaning(chosen[0].name, base_backend)},
              "variants": [_variant_summary(v) for v in chosen], "benchmark": bench.to_dict(),
              "skipped_targets": skipped + bench.skipped, "diagnostics": findings, "parity": parity,
              "backend_pairs": pairs, "headline": headline, "flags": flags, "warnings": warnings,
              "gate": {"max_accuracy_drop": recipe.report.max_accuracy_drop,
                       "gate_speedup": dict(recipe.report.gate_speedup), "qualified": qualified,
                       "below_speed_gate": {f"{m} on {b}": why for (m, b), why in gate.items()}},
              "speedup_ci": [{"model": r["model"], "backend": r["backend"], "batch": r["batch"], "level": CI_LEVEL,
                              "ci": ratio_ci(r.get("speedup_rounds"))} for r in rows if not r.get("baseline")],
              "step_ratios": _all_steps(chosen, rows), "stages": manifest.get("stages", [])}
    write_json_atomic(run_dir / "report.json", report)
    md = _markdown(recipe, chosen, bench, base_backend, skipped, findings, parity, headline, s.labelled, run_dir,
                   pairs, flags, warnings)
    path = write_text_atomic(run_dir / "report.md", md)
    manifest["report"] = {"markdown": str(path), "json": str(run_dir / "report.json"), "headline": headline,
                          "qualified": qualified}
    return path, headline


def float_baseline_backend(backends: List[str], reference: Variant) -> str:
    """The first target that is a float baseline (``BackendSpec.float_baseline``) and runs one of the reference's
    artifacts; else the first target."""
    from edgekit.backends import backend_spec
    from edgekit.bench.specs import variant_artifacts

    kinds = set(variant_artifacts(reference))
    for b in backends:
        spec = backend_spec(b)
        if spec.float_baseline and kinds & set(spec.artifact_kinds):
            return b
    return backends[0]


def _baseline_meaning(variant: str, backend: str) -> str:
    from edgekit.backends import BACKENDS, backend_spec

    spec = backend_spec(backend)
    if spec.float_baseline:
        return f"{spec.label} of the reference model"
    floats = ", ".join(n for n, sp in BACKENDS.items() if sp.float_baseline) or "none registered"
    return f"{variant} on {backend}: the recipe has no float-baseline target ({floats})"


def _variant_summary(v: Variant) -> dict:
    return {"name": v.name, "parent": v.parent, "artifacts": v.artifacts(), "metrics": v.metrics,
            "target": v.recorded("target"), "float_layers": v.recorded("float_layers") or [],
            "int8_mac_fraction": v.recorded("int8_mac_fraction")}


def final_variant(chosen: List[Variant], backend: str) -> Variant:
    """The last variant made for ``backend`` (artifacts quantised for a target other than the backend's
    ``quant_target`` are passed over)."""
    from edgekit.backends import backend_spec

    want = backend_spec(backend).quant_target
    for v in reversed(chosen):
        target = v.recorded("target")
        if target is None or target == want:
            return v
    return chosen[-1]


NOISY_BASELINE = 1.5  # baseline p50 / min above this: its timing is dominated by interference


def timing_warnings(bench: Any, rows: List[dict]) -> List[str]:
    """Warnings that make every ratio suspect: machine load above its cores, a baseline whose p50 is far above
    its minimum (interference during its timing)."""
    out = []
    load = bench.load_warning() if hasattr(bench, "load_warning") else None
    if load:
        out.append(load)
    for r in rows:
        if r.get("baseline") and r.get("min_ms") and r.get("p50_ms") and r["p50_ms"] > NOISY_BASELINE * r["min_ms"]:
            out.append(f"Warning: the baseline's p50 at batch {r['batch']} ({r['p50_ms']:.3f} ms) is "
                       f"{r['p50_ms'] / r['min_ms']:.1f}× its minimum ({r['min_ms']:.3f} ms): its timing was "
                       "disturbed, "
                       "so speedups against it are inflated; rerun on a quiet machine")
    for a in (getattr(bench, "config", None) or {}).get("adaptive") or []:
        if not a["met"]:
            out.append(f"Warning: at batch {a['batch']} the widest speed-up CI stayed ±{a['widest_ci_half_width']:.0%} "
                       f"of its median after {a['rounds']} rounds (target ±{a['ci_target']:.0%}): read the CIs")
    return out


def _made_for(v: Variant, backend: str) -> bool:
    from edgekit.backends import BACKENDS

    target = v.recorded("target")
    return target is None or backend not in BACKENDS or target == BACKENDS.get(backend).quant_target


def _headline(chosen: List[Variant], rows: List[dict], base_backend: str, labelled: bool,
              flags: Dict[str, List[str]], warnings: List[str],
              gate: Optional[Dict[Tuple[str, str], List[str]]] = None) -> Tuple[List[str], Dict[str, Optional[str]]]:
    """Per backend, the fastest variant (made for it) that qualifies -- never one flagged by
    :func:`variant_flags` nor below the speed gate (:func:`gate_failures`) -- with its CI; a line saying so when
    none qualifies; timing warnings first. Also returns ``{backend: qualifying variant or None}``."""
    gate = gate or {}
    qualified: Dict[str, Optional[str]] = {}
    if not rows:
        return list(warnings), qualified
    b0 = min(r["batch"] for r in rows)
    base = next((r for r in rows if r.get("baseline") and r["batch"] == b0), None)
    names = {v.name: v for v in chosen}
    lines = [w.split(". ")[0].rstrip(".") + " (see report.md)" for w in warnings]
    for backend in dict.fromkeys(r["backend"] for r in rows):
        cands = [r for r in rows if r["backend"] == backend and r["batch"] == b0 and not r.get("baseline")
                 and r.get("speedup") is not None and r["model"] in names and _made_for(names[r["model"]], backend)]
        reasons = {r["model"]: flags.get(r["model"], []) + gate.get((r["model"], backend), []) for r in cands}
        ok = [r for r in cands if not reasons[r["model"]]]
        if base is None or not cands:
            continue
        if not ok:
            qualified[backend] = None
            why = "; ".join(f"{r['model']}: {reasons[r['model']][0]}" for r in cands)
            lines.append(f"no variant qualifies on {backend} ({why})")
            continue
        r = max(ok, key=lambda x: x["speedup"])
        qualified[backend] = r["model"]
        acc = ""
        if labelled and r.get("accuracy") is not None and base.get("accuracy") is not None:
            ci = r.get("accuracy_delta_ci")  # paired over the same samples as the baseline's
            ci_text = f" [95% CI {ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else ""
            acc = f", {r['accuracy'] - base['accuracy']:+.1f} pt accuracy{ci_text} ({r['accuracy']:.1f}%)"
        lines.append(f"{r['model']} on {backend}: {format_speedup_ci(r)} faster than the float baseline "
                     f"({base['model']} on {base_backend}) at batch {r['batch']}{acc}")
    return lines, qualified


def _pairs_section(chosen: List[Variant], pairs: List[dict]) -> List[str]:
    """Each backend vs the default ONNX backend on the same file: paired per-round ratios per variant and batch."""
    from edgekit.bench.pairs import format_ratio

    if not pairs:
        return []
    batches = sorted({p["batch"] for p in pairs})
    ref = pairs[0]["reference"]
    out = [f"## Backends on the same file (vs {ref})", "",
           f"Each backend against {ref} on the same artifact, from the same interleaved rounds: median of the "
           f"per-round latency ratios {ref} / backend (min–max over rounds); above 1× the backend is faster.", "",
           "| variant | backend | artifact | " + " | ".join(f"batch {b}" for b in batches) + " |",
           "|" + "---|" * (3 + len(batches))]
    for v in chosen:
        for backend in dict.fromkeys(p["backend"] for p in pairs if p["model"] == v.name):
            by_b = {p["batch"]: p for p in pairs if p["model"] == v.name and p["backend"] == backend}
            art = Path(next(iter(by_b.values()))["artifact"]).name
            cells = [format_ratio(by_b[b]) if b in by_b else "–" for b in batches]
            out.append(f"| {v.name} | {backend} | {art} | " + " | ".join(cells) + " |")
    return out + [""]


def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.2f}%"


def _quantisation_section(chosen: List[Variant]) -> List[str]:
    """Per int8 variant: scheme, calibration, coverage, the accuracy budget and every layer fallen back to float."""
    quantised = [v for v in chosen if v.meta.get("precision") == "int8"]
    if not quantised:
        return []
    out = ["## INT8 quantisation", "",
           "Validation accuracy through ONNX Runtime CPU: fp32 model, all layers int8, and the artifact kept "
           "(after any fallback). int8 MACs: share of the model's MACs that ONNX Runtime CPU runs in int8 kernels.", "",
           "| variant | target | calibration | int8 MACs | val fp32 | val all-int8 | val kept | budget (max drop) "
           "| float layers |", "|---|---|---|---|---|---|---|---|---|"]
    notes: List[str] = []
    for v in quantised:
        m, acc = v.meta, v.meta.get("accuracy") or {}
        cal = m.get("calibration") or {}
        how = (f"{cal.get('method', m.get('mode', '–'))}, {cal['samples']} samples" if cal.get("samples")
               else m.get("mode", "–"))
        budget = acc.get("max_accuracy_drop")
        met = ""
        if budget is not None and acc.get("fp32_val") is not None and acc.get("int8_val") is not None:
            drop = acc["fp32_val"] - acc["int8_val"]
            met = f" — drop {drop:.2f}, {'met' if drop <= budget + 1e-9 else 'NOT met'}"
        floats = m.get("float_layers") or []
        frac = m.get("int8_mac_fraction")
        out.append(f"| {v.name} | {m.get('target', '–')} | {how} | {'–' if frac is None else f'{frac:.1%}'} | "
                   f"{_pct(acc.get('fp32_val'))} | {_pct(acc.get('int8_val_all_layers', acc.get('int8_val')))} | "
                   f"{_pct(acc.get('int8_val'))} | {'none' if budget is None else f'{budget:g} pt'}{met} | "
                   f"{len(floats) or 'none'} |")
        for step in m.get("fallback") or []:
            notes.append(f"- **{v.name}**: `{step['layer']}` kept in float → val {step['val_accuracy']:.2f}% "
                         f"(drop {step['accuracy_drop']:.2f}), int8 MACs {step['int8_mac_fraction']:.1%}, batch-1 "
                         f"latency {step['slowdown_vs_int8']:.2f}× the all-int8 artifact")
        if m.get("escalated_to_qat"):
            notes.append(f"- **{v.name}**: layer fallback could not meet the budget ({m.get('fallback_error', '')}); "
                         "escalated to quantisation-aware training")
    if notes:
        out += ["", "Layers fallen back to float, in order (each row measured with all the layers above it in float):",
                ""] + notes
    return out + [""]


def _fmt_int(n: Optional[float], unit: str = "") -> str:
    if n is None:
        return "–"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suf}{unit}"
    return f"{n:.0f}{unit}"


def _all_steps(chosen: List[Variant], rows: List[dict]) -> List[dict]:
    names = {v.name for v in chosen}
    return [{"variant": v.name, "parent": v.parent, **{k: x[k] for k in ("backend", "batch", "ratio", "ci")}}
            for v in chosen if v.parent in names for x in step_ratios(rows, v.name, v.parent)]


def _payoff_section(recipe: Any, chosen: List[Variant], rows: List[dict], findings: List[dict]) -> List[str]:
    """Every step against its parent at every benchmarked batch and backend (paired, with CI), then the causes."""
    steps = _all_steps(chosen, rows)
    slow = [x for x in steps if x["ratio"] < recipe.report.min_speedup]
    out = ["## Did each step pay off?", ""]
    if steps:
        out += ["Each variant against its parent, per backend and batch: median of the per-round ratios "
                f"parent / variant from the same interleaved rounds, with a {CI_LEVEL:.0%} bootstrap CI.", "",
                "| variant | parent | backend | batch | step speedup | pays off? |", "|---|---|---|---|---|---|"]
        for x in steps:
            cell = "–" if x["ci"] is None else f"[{x['ci'][0]:.2f}–{x['ci'][1]:.2f}]"
            verdict = "**no**" if x["ratio"] < recipe.report.min_speedup else "yes"
            out.append(f"| {x['variant']} | {x['parent']} | {x['backend']} | {x['batch']} | {x['ratio']:.2f}× {cell} "
                       f"| {verdict} |")
        out.append("")
    for f in findings:
        out.append(f"- **{f['variant']}** vs {f['parent']} on {f['backend']} (batch {f['batch']}): "
                   f"{f['step_speedup']:.2f}× — " + "; ".join(f["causes"]))
    if not findings and not slow and steps:
        out.append(f"Every step was at least {recipe.report.min_speedup:.2f}× faster than its parent at every "
                   f"benchmarked batch on every target, with int8 coverage ≥ {recipe.report.min_int8_coverage:.0%} "
                   "where quantised.")
    elif slow and not findings:
        out.append(f"{len(slow)} step(s) above are below {recipe.report.min_speedup:.2f}× at some batch.")
    return out


def _flags_section(flags: Dict[str, List[str]], warnings: List[str]) -> List[str]:
    flagged = [(v, why) for v, reasons in flags.items() for why in reasons]
    if not flagged and not warnings:
        return []
    out = ["## Flags", ""] + [f"- {w}" for w in warnings]
    out += [f"- **{v}** (never a headline): {why}" for v, why in flagged]
    return out + [""]


def _markdown(recipe, chosen, bench, base_backend, skipped, findings, parity, headline, labelled, run_dir,
              pairs, flags, warnings) -> str:
    from edgekit.backends import default_backend

    rows, batches = bench.rows, sorted({r["batch"] for r in bench.rows})
    onnx_cpu = default_backend("onnx", "cpu")
    ort_ref = {r["batch"]: r for r in rows if r["model"] == chosen[0].name and r["backend"] == onnx_cpu}
    out = [f"# edgekit report: {recipe.name}", ""]
    if recipe.description:
        out += [recipe.description.strip(), ""]
    out += ["## Headline", ""] + [f"- **{h}**" for h in headline] + [""]
    out += _flags_section(flags, warnings)
    meaning = _baseline_meaning(chosen[0].name, base_backend)
    out += [f"Float baseline: **{chosen[0].name} on {base_backend}** ({meaning}). "
            "Speedups are medians of per-round paired ratios measured interleaved in one process, with a "
            f"{CI_LEVEL:.0%} bootstrap confidence interval over the rounds. `vs ORT fp32` divides by the reference "
            "on ONNX Runtime fp32, separating the gain from compression from the gain of switching runtime.", ""]
    hdr = ["variant", "backend", "precision", "params", "MACs", "size", "accuracy"]
    for b in batches:
        hdr += [f"p50 b{b} (ms)", f"p99 b{b} (ms)"]
    hdr += [f"speedup b{batches[0]}", f"vs ORT fp32 b{batches[0]}", "efficiency", "float layers"]
    out += ["## Variants × targets", "", "| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for v in chosen:
        for backend in dict.fromkeys(r["backend"] for r in rows if r["model"] == v.name):
            by_b = {r["batch"]: r for r in rows if r["model"] == v.name and r["backend"] == backend}
            r0 = by_b[batches[0]]
            acc = "n/a" if not labelled or r0.get("accuracy") is None else f"{r0['accuracy']:.1f}%"
            if acc != "n/a" and r0.get("accuracy_delta_ci"):
                acc += f" ({format_accuracy_delta(r0)})"
            cells = [v.name, backend, r0["precision"], _fmt_int(v.metrics.get("params")), _fmt_int(r0.get("macs")),
                     _fmt_int(r0.get("size_bytes"), "B"), acc]
            for b in batches:
                rb = by_b.get(b)
                cells += [f"{rb['p50_ms']:.3f}" if rb else "–", f"{rb['p99_ms']:.3f}" if rb else "–"]
            ref = ort_ref.get(batches[0])
            vs_ort = (f"{r0['speedup'] / ref['speedup']:.2f}×" if ref and ref.get("speedup") and r0.get("speedup")
                      else "–")
            eff = measured_efficiency(r0) or "–"
            floats = v.recorded("float_layers") or []
            floats_cell = ", ".join(floats[:3]) + ("…" if len(floats) > 3 else "") or "–"
            cells += [format_speedup_ci(r0), vs_ort, eff, floats_cell]
            out.append("| " + " | ".join(str(c) for c in cells) + " |")
    out.append("")
    for name in ("latency.png", "pareto.png", "throughput.png"):
        if (run_dir / "bench" / name).is_file():
            out += [f"![{name[:-4]}](bench/{name})", ""]
    out += _pairs_section(chosen, pairs)
    out += _quantisation_section(chosen)
    out += _payoff_section(recipe, chosen, rows, findings)
    out += scratch_section(chosen)
    out += ["", "## Accuracy parity across artifacts", ""]
    if parity:
        out += ["| variant | artifact | accuracy | top-1 agreement | flagged |", "|---|---|---|---|---|"]
        for p in parity:
            for art, a in p["artifacts"].items():
                agree = next(v for k, v in a.items() if k.startswith("top1"))
                acc = "n/a" if a["accuracy"] is None else f"{a['accuracy']:.1f}%"
                out.append(f"| {p['variant']} | {art} | {acc} | {agree:.1f}% | {'**yes**' if p['flagged'] else 'no'} |")
    else:
        out.append("No variant has two runnable artifacts to compare.")
    gone = skipped + [s for s in bench.skipped if s.get("model") == "*"]
    if gone:
        out += ["", "## Skipped targets", ""] + [f"- {s['backend']}: {s['reason']}" for s in gone]
    out += ["", "## Environment", "", bench.environment_line(), ""]
    return "\n".join(out) + "\n"
