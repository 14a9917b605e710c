"""INT8 for recurrent models: build each form that can run in int8, measure them paired, keep the fastest.

ONNX Runtime quantises LSTM (``DynamicQuantizeLSTM``) but not GRU ("not planned", ONNX Runtime #9796): after
``quantize_dynamic`` a GRU model runs only its classifier in int8. The other form unrolls each GRU node into its
MatMul/gate graph (one input projection for all steps, then per step one recurrent MatMul and the gate math), whose
MatMuls ``quantize_dynamic`` makes int8. On ORT CPU the fused fp32 GRU op beats the unrolled int8 graph at small
hidden sizes (~1 µs per node over ~12 nodes per step costs more than the int8 MatMul saves) and loses to it from
hidden ~256 at batch >= 8, so neither form is a safe default: both are built, checked against the fp32 model and
timed in the same process, interleaved (the fp32 model as the paired baseline), and the fastest correct one is
written. The decision, each form's int8 MAC share, accuracy and speed-ups land in the sidecar under ``rnn_forms``.

The unrolled form bakes the sequence length into the graph; models with a dynamic time axis keep the op form.

Example:
    >>> res = quantize_dynamic_best("gru.onnx", QuantizeConfig(mode="dynamic"), out_path="gru.int8.onnx",
    ...                             val=splits.val)
    >>> res.sidecar["rnn_forms"]["chosen"]
    'op'
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgekit._io import atomic_path, write_sidecar
from edgekit.techniques.quantize.config import QuantizeConfig

logger = logging.getLogger(__name__)

RECURRENT_OPS = ("LSTM", "GRU")
#: batches timed to choose a form, and the paired timing rounds
CHOICE_BATCHES = (1, 8)
CHOICE_ROUNDS = 7
#: a form is correct when its int8 accuracy is within this many points of the fp32 model's (or the config's budget)
DEFAULT_TOLERANCE = 0.5


def recurrent_nodes(model: Any) -> Dict[str, List[str]]:
    """{op type: [node names]} of the LSTM/GRU nodes of a loaded ONNX model."""
    out: Dict[str, List[str]] = {}
    for n in model.graph.node:
        if n.op_type in RECURRENT_OPS:
            out.setdefault(n.op_type, []).append(n.name or n.output[0])
    return out


def _gru_refusal(node: Any, shapes: Dict[str, list], inits: Dict[str, np.ndarray]) -> Optional[str]:
    """Why ``node`` cannot be unrolled (None when it can)."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("direction", b"forward") not in (b"forward", "forward"):
        return f"direction {attrs['direction']!r} (only forward GRUs are unrolled)"
    if attrs.get("linear_before_reset", 0) != 1 or "activations" in attrs or "clip" in attrs:
        return "not PyTorch's GRU (linear_before_reset=1, default activations, no clip)"
    ins = list(node.input) + [""] * (6 - len(node.input))
    if ins[4] or not ins[5] or not ins[3] or any(ins[i] not in inits for i in (1, 2, 3)):
        return "needs constant W/R/B, no sequence_lens and an initial_h input"
    steps = (shapes.get(ins[0]) or [None])[0]
    if not isinstance(steps, int):
        return "dynamic sequence length (the unrolled form bakes the number of steps into the graph)"
    return None


def _unrolled_nodes(node: Any, steps: int, hidden: int, p: str) -> list:
    """Nodes computing PyTorch/ONNX GRU semantics (gates z, r, h; n = tanh(x W_h + b_h + r (h R_h + Rb_h)))."""
    from onnx import helper as h

    x, h_prev = node.input[0], node.input[5]
    nodes = [h.make_node("MatMul", [x, f"{p}W_zr"], [f"{p}xzr0"]), h.make_node("Add", [f"{p}xzr0", f"{p}b_zr"],
                                                                                  [f"{p}xzr"]),
             h.make_node("MatMul", [x, f"{p}W_h"], [f"{p}xh0"]), h.make_node("Add", [f"{p}xh0", f"{p}b_h"], [f"{p}xh"]),
             h.make_node("Split", [f"{p}xzr", f"{p}ones"], [f"{p}xzr_{t}" for t in range(steps)], axis=0),
             h.make_node("Split", [f"{p}xh", f"{p}ones"], [f"{p}xh_{t}" for t in range(steps)], axis=0)]
    for t in range(steps):
        q = f"{p}{t}_"
        nodes += [h.make_node("MatMul", [h_prev, f"{p}R"], [q + "hr0"]),
                  h.make_node("Add", [q + "hr0", f"{p}rb"], [q + "hr"]),
                  h.make_node("Split", [q + "hr", f"{p}split_zr_h"], [q + "hzr", q + "hh"], axis=2),
                  h.make_node("Add", [f"{p}xzr_{t}", q + "hzr"], [q + "zr0"]),
                  h.make_node("Sigmoid", [q + "zr0"], [q + "zr"]),
                  h.make_node("Split", [q + "zr", f"{p}split_z_r"], [q + "z", q + "r"], axis=2),
                  h.make_node("Mul", [q + "r", q + "hh"], [q + "rh"]),
                  h.make_node("Add", [f"{p}xh_{t}", q + "rh"], [q + "n0"]),
                  h.make_node("Tanh", [q + "n0"], [q + "n"]),
                  h.make_node("Sub", [h_prev, q + "n"], [q + "d"]),
                  h.make_node("Mul", [q + "z", q + "d"], [q + "zd"]),
                  h.make_node("Add", [q + "n", q + "zd"], [q + "h"])]
        h_prev = q + "h"
    outs = list(node.output) + ["", ""]
    if outs[0]:
        nodes += [h.make_node("Concat", [f"{p}{t}_h" for t in range(steps)], [f"{p}Y3"], axis=0),
                  h.make_node("Unsqueeze", [f"{p}Y3", f"{p}axis1"], [outs[0]])]
    if outs[1]:
        nodes.append(h.make_node("Identity", [h_prev], [outs[1]]))
    return nodes


def _unrolled_weights(node: Any, inits: Dict[str, np.ndarray], steps: int, p: str) -> list:
    from onnx import numpy_helper as nh

    w, r, b = (inits[node.input[i]][0].astype(np.float32) for i in (1, 2, 3))
    hidden = r.shape[1]
    wb, rb = b[:3 * hidden], b[3 * hidden:]
    arrays = {"W_zr": w[:2 * hidden].T, "b_zr": wb[:2 * hidden] + rb[:2 * hidden], "W_h": w[2 * hidden:].T,
              "b_h": wb[2 * hidden:], "R": r.T, "rb": np.concatenate([np.zeros(2 * hidden, np.float32),
                                                                       rb[2 * hidden:]]),
              "ones": np.ones(steps, np.int64), "split_zr_h": np.array([2 * hidden, hidden], np.int64),
              "split_z_r": np.array([hidden, hidden], np.int64), "axis1": np.array([1], np.int64)}
    return [nh.from_array(np.ascontiguousarray(v), p + k) for k, v in arrays.items()]


def unroll_gru(model: Any) -> Tuple[Any, List[str], Dict[str, str]]:
    """A copy of ``model`` with every unrollable GRU node replaced by its MatMul/gate graph.

    Returns:
        (new model, names of the unrolled nodes, {name of a GRU kept as an op: why}).

    Example:
        >>> new, done, kept = unroll_gru(onnx.load("gru.onnx"))
    """
    import onnx
    from onnx import numpy_helper as nh

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input]}
    inits = {i.name: nh.to_array(i) for i in model.graph.initializer}
    new = onnx.ModelProto()
    new.CopyFrom(model)
    del new.graph.node[:]
    done, kept, used = [], {}, set()
    for i, node in enumerate(model.graph.node):
        name = node.name or node.output[0]
        why = _gru_refusal(node, shapes, inits) if node.op_type == "GRU" else "-"
        if why is not None:
            if node.op_type == "GRU":
                kept[name] = why
            new.graph.node.append(node)
            continue
        steps, prefix = shapes[node.input[0]][0], f"edgekit_gru{i}_"
        new.graph.node.extend(_unrolled_nodes(node, steps, int(inits[node.input[2]].shape[2]), prefix))
        new.graph.initializer.extend(_unrolled_weights(node, inits, steps, prefix))
        used.update(node.input[1:4])
        done.append(name)
    still = {x for n in new.graph.node for x in n.input}
    keep_inits = [t for t in new.graph.initializer if t.name not in used or t.name in still]
    del new.graph.initializer[:]
    new.graph.initializer.extend(keep_inits)
    return new, done, kept


def _example(model: Any, val: Any, batch: int) -> np.ndarray:
    if val is not None:
        x = np.asarray(val.x[:batch], np.float32)
        return np.concatenate([x] * math.ceil(batch / len(x)))[:batch]
    dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(0).standard_normal([batch, *dims[1:]]).astype(np.float32)


def time_forms(paths: Dict[str, Path], inputs: Dict[int, np.ndarray], threads: Optional[int],
               rounds: int = CHOICE_ROUNDS, iters: int = 20, baseline: str = "fp32") -> Dict[str, Dict[int, dict]]:
    """Paired speed-ups of every form over ``baseline``, per batch: {form: {batch: ratio summary}}.

    All forms of one batch run in the same process, interleaved in rounds (A B C A B C ...); a round's ratio is
    the baseline's fastest iteration over the form's.
    """
    from edgekit.backends import default_backend, open_runner
    from edgekit.core.measure.latency import Case, paired_ratios, ratio_summary, run_interleaved

    backend = default_backend("onnx", "cpu")
    runners = {k: open_runner(p, backend, threads=threads) for k, p in paths.items()}
    names = [baseline, *[k for k in paths if k != baseline]]
    out: Dict[str, Dict[int, dict]] = {k: {} for k in names if k != baseline}
    for batch, x in inputs.items():
        cases = [Case(k, runners[k], runners[k].prepare(x)) for k in names]
        res = run_interleaved(cases, warmup=5, iters=iters * rounds, min_time=None, rounds=rounds,
                              desc=f"rnn forms b{batch}")
        per_round = res.round_stat("min")
        for i, k in enumerate(names[1:], start=1):
            summary = ratio_summary(paired_ratios(per_round[0], per_round[i]))
            out[k][batch] = {**summary, "ms": float(np.median(per_round[i])), "fp32_ms": float(np.median(per_round[0]))}
    for r in runners.values():
        r.close()
    return out


def _candidates(src: Path, tmp: Path, cfg: QuantizeConfig, val: Any, threads: Optional[int]) -> Tuple[dict, dict]:
    """Quantise each form of ``src``; returns ({form: QuantizeResult}, notes)."""
    import onnx

    from edgekit.techniques.quantize.dynamic import quantize_dynamic_model

    results = {"op": quantize_dynamic_model(src, cfg, out_path=tmp / "op.int8.onnx", val=val, threads=threads)}
    unrolled, done, kept = unroll_gru(onnx.load(str(src)))
    notes: Dict[str, Any] = {"gru_kept_as_op": kept}
    if done:
        fp32_unrolled = tmp / "unrolled.onnx"
        onnx.save(unrolled, str(fp32_unrolled))
        err = _max_error(src, fp32_unrolled, _example(unrolled, val, 8), threads)
        notes["unrolled_fp32_max_abs_error"] = err
        if err <= 1e-3:
            results["unrolled"] = quantize_dynamic_model(fp32_unrolled, cfg, out_path=tmp / "unrolled.int8.onnx",
                                                         val=val, threads=threads)
        else:
            notes["unrolled_refused"] = f"unrolled fp32 graph differs from the GRU op by {err:.2e}"
    return results, notes


def _max_error(a: Path, b: Path, x: np.ndarray, threads: Optional[int]) -> float:
    from edgekit.backends import default_backend, open_runner

    backend = default_backend("onnx", "cpu")
    with open_runner(a, backend, threads=threads) as ra, open_runner(b, backend, threads=threads) as rb:
        return float(np.abs(ra(x) - rb(x)).max())


def _choose(results: dict, speed: Dict[str, Dict[int, dict]], tolerance: float) -> Tuple[str, Dict[str, dict]]:
    """The correct form with the best geometric-mean speed-up over the timed batches."""
    table = {}
    for form, res in results.items():
        acc = res.accuracy
        correct = not acc or acc["int8_val"] >= acc["fp32_val"] - tolerance
        geo = float(np.exp(np.mean([np.log(s["speedup"]) for s in speed[form].values()])))
        table[form] = {"int8_mac_fraction": round(res.int8_mac_fraction, 4), "accuracy": acc, "correct": correct,
                       "speedup_vs_fp32": {str(b): {k: round(v, 4) if isinstance(v, float) else v
                                                    for k, v in s.items()} for b, s in speed[form].items()},
                       "geomean_speedup": round(geo, 4)}
    ranked = sorted((f for f in table if table[f]["correct"]), key=lambda f: -table[f]["geomean_speedup"])
    return (ranked[0] if ranked else "op"), table


def quantize_dynamic_best(onnx_path: str | os.PathLike, cfg: QuantizeConfig, *, out_path: str | os.PathLike,
                          val: Any = None, threads: Optional[int] = 2, batches: Sequence[int] = CHOICE_BATCHES) -> Any:
    """Dynamic INT8 that picks, for a model with GRU nodes, the fastest correct form (op or unrolled MatMuls).

    Models without LSTM/GRU go straight to :func:`edgekit.techniques.quantize.dynamic.quantize_dynamic_model`. For
    recurrent models every form is quantised, checked (int8 accuracy within ``cfg.max_accuracy_drop`` or 0.5 point
    of fp32 when ``val`` is given) and timed paired against the fp32 model at ``batches``; the decision and every
    form's measurements are recorded in the sidecar (``rnn_forms``) and the result's metrics.

    Example:
        >>> res = quantize_dynamic_best("gru.onnx", QuantizeConfig(mode="dynamic"), out_path="q.onnx", val=val)
        >>> res.metrics["rnn_form"], res.sidecar["rnn_forms"]["forms"]["op"]["int8_mac_fraction"]
    """
    import onnx

    from edgekit.techniques.quantize.dynamic import quantize_dynamic_model

    src = Path(onnx_path)
    found = recurrent_nodes(onnx.load(str(src), load_external_data=False)) if src.is_file() else {}
    if not found:
        return quantize_dynamic_model(src, cfg, out_path=out_path, val=val, threads=threads)
    out_path = Path(out_path)
    tmp_root = out_path.parent if out_path.parent.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="edgekit-rnnq-", dir=tmp_root) as d:
        results, notes = _candidates(src, Path(d), cfg, val, threads)
        model = onnx.load(str(src), load_external_data=False)
        inputs = {b: _example(model, val, b) for b in batches}
        paths = {"fp32": src, **{k: r.artifact for k, r in results.items()}}
        speed = time_forms(paths, inputs, threads)
        tol = cfg.max_accuracy_drop if cfg.max_accuracy_drop is not None else DEFAULT_TOLERANCE
        chosen, table = _choose(results, speed, tol)
        with atomic_path(out_path, suffix=".onnx") as t:
            shutil.copyfile(results[chosen].artifact, t)
    result = results[chosen]
    result.artifact = out_path
    decision = {"chosen": chosen, "faster_than_fp32": table[chosen]["geomean_speedup"] > 1.0,
                "recurrent_ops": found, "batches": list(batches), "threads": threads,
                "rounds": CHOICE_ROUNDS, "accuracy_tolerance": tol, "forms": table, **notes}
    result.sidecar["rnn_forms"] = decision
    result.metrics.update(rnn_form=chosen, **{f"speedup_b{b}": table[chosen]["speedup_vs_fp32"][str(b)]["speedup"]
                                              for b in batches})
    write_sidecar(out_path, result.sidecar)
    logger.info(f"recurrent INT8: chose form '{chosen}' "
                + ", ".join(f"{f}: x{t['geomean_speedup']} int8 MACs {t['int8_mac_fraction']:.1%}"
                            for f, t in table.items()))
    return result
