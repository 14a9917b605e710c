"""Speed-aware INT8: keep in float the layers whose int8 kernels are slower than their float ones, measured.

On an x86 CPU, ONNX Runtime's int8 kernels lose to float in some places: a convolution with one or three input
channels, depthwise convolutions, 1×1 convolutions on 1×1 maps (measured 3-4× slower, research note Q2). Then an
"all-int8" model can be slower than its fp32 parent. After calibration:

1. **Profile** the fp32 and the all-int8 graph with ONNX Runtime's profiler at every benchmarked batch size; map
   each optimised kernel back to its original contraction node (``Conv``, ``Gemm``, ``MatMul``...); a node is
   *flagged* when its int8 kernel exceeds its float kernel by more than ``max(10 %, 2 µs)`` at some batch.
2. **Build two fallback policies** from the same calibration (no new calibration pass):
   ``exclude-flagged`` keeps the flagged nodes float together with every non-contraction node fed only by float
   nodes (no Q/DQ islands between float layers); ``contractions-only`` quantises only the unflagged
   contractions (pooling, activations and the rest stay float). Which one wins depends on the model.
3. **Time** fp32 and every candidate paired and interleaved at every batch size (per-round ratios), measure the
   validation accuracy when a split is given, and keep the fastest candidate within the accuracy budget; a batch
   size where even that one is slower than fp32 is flagged (``slower_than_fp32``).

Example:
    >>> decision = choose_speed_policy(pre, all_int8, build, sample, batches=(1, 8, 32), work_dir=tmp)
    >>> decision.policy, decision.float_nodes, decision.to_dict()["speedup"]
"""
from __future__ import annotations

import collections
import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgekit._log import progress

logger = logging.getLogger(__name__)

CONTRACTIONS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FUSED_FLOAT = {"FusedConv", "FusedGemm", "FusedMatMul", "NhwcFusedConv"}
_INT8_KERNELS = {"QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat", "NhwcQLinearConv"}
# ops ORT fuses into the contraction before them (their output names can label the fused kernel)
_FUSABLE = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Add", "BatchNormalization", "Sum", "HardSwish"}
MARGIN, MIN_US = 0.10, 2.0  # a node is flagged when int8 - float > max(MARGIN x float, MIN_US) at some batch

BuildFn = Callable[[str, Path], Path]  # (policy name, output path) -> quantised model
SampleFn = Callable[[int], Any]  # batch size -> model inputs (one array or named arrays)


@dataclass
class SpeedDecision:
    """What the speed check measured and chose (recorded in the QuantizeResult sidecar under ``speed``)."""

    policy: str  # "all-int8" | "exclude-flagged" | "contractions-only"
    batches: List[int]
    flagged: List[Dict[str, Any]] = field(default_factory=list)  # {node, op_type, float_us, int8_us} per batch
    float_nodes: List[str] = field(default_factory=list)  # kept float for speed by the chosen policy
    speedup: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # policy -> batch -> median/p10/p90 vs fp32
    accuracy: Dict[str, float] = field(default_factory=dict)  # policy -> val accuracy (when measured)
    slower_than_fp32: List[int] = field(default_factory=list)  # batches where the chosen one is still slower
    path: Optional[Path] = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"policy": self.policy, "batches": self.batches, "flagged": self.flagged,
                "float_nodes": self.float_nodes, "speedup_vs_fp32": self.speedup, "accuracy": self.accuracy,
                "slower_than_fp32": self.slower_than_fp32, "seconds": round(self.seconds, 1),
                "method": "ORT CPU per-node profile (fp32 vs int8 kernels), then fp32 and each policy timed paired "
                          "and interleaved; speedup = median (p10, p90) of per-round fp32/policy latency ratios"}


def contraction_keys(model) -> Dict[str, set]:
    """``{contraction node: names its optimised kernel may carry}`` (its own, and the outputs/names of a chain of
    single fusable consumers such as Conv → Relu, which ORT names the fused kernel after)."""
    consumers: Dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    keys = {}
    for n in model.graph.node:
        if n.op_type not in CONTRACTIONS or not n.name:
            continue
        ids, outs = {n.name}, list(n.output)
        for _ in range(3):
            ids |= set(outs)
            nxt = [c for o in outs for c in consumers.get(o, [])]
            if len(nxt) != 1 or nxt[0].op_type not in _FUSABLE:
                break
            ids.add(nxt[0].name)
            outs = list(nxt[0].output)
        keys[n.name] = ids | set(outs)
    return keys


def _strip(name: str) -> str:
    """The original node/tensor name inside an optimised kernel's name (``fused X``, ``X_token_3``, ``X_nchwc``)."""
    name = re.sub(r"^fused ", "", name)
    name = re.sub(r"(_token_\d+)+$", "", name)
    return re.sub(r"_nchwc$", "", name)


def kernel_times(profile: Dict[str, Tuple[str, float]], keys: Dict[str, set], int8: bool) -> Dict[str, float]:
    """``{contraction node: kernel µs}`` from a profile, for the float or the int8 graph's contraction kernels."""
    wanted = (_INT8_KERNELS | set(CONTRACTIONS) | _FUSED_FLOAT) if int8 else (set(CONTRACTIONS) | _FUSED_FLOAT)
    out: Dict[str, float] = {}
    for name, (op, us) in profile.items():
        if op not in wanted:
            continue
        base = _strip(name)
        hit = [k for k, ids in keys.items() if base in ids]
        if len(hit) == 1:
            out[hit[0]] = out.get(hit[0], 0.0) + us
    return out


def profile_nodes(path: Path, inputs: Any, runs: int = 20, threads: Optional[int] = 1) -> Dict[str, Tuple[str, float]]:
    """``{kernel name: (op type, median µs per run)}`` from ONNX Runtime's profiler (after warm-up runs)."""
    import onnxruntime as ort

    from edgekit.backends.ort import session_options

    so = session_options(threads)
    so.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="edgekit-prof-") as d:
        so.profile_file_prefix = str(Path(d) / "p")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feeds = inputs if isinstance(inputs, dict) else {sess.get_inputs()[0].name: inputs}
        for _ in range(5):
            sess.run(None, feeds)
        for _ in range(runs):
            sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    per, ops = collections.defaultdict(list), {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            per[name].append(e["dur"])
            ops[name] = e.get("args", {}).get("op_name", "?")
    return {n: (ops[n], float(np.median(v[-runs:]))) for n, v in per.items()}


def flag_slow_nodes(fp32: Path, int8: Path, sample: SampleFn, batches: Sequence[int],
                    threads: Optional[int] = 1) -> List[Dict[str, Any]]:
    """Contraction nodes whose int8 kernel is slower than their float kernel at some batch size, with the times.

    Example:
        >>> flag_slow_nodes(pre, all_int8, lambda b: x[:b], (1, 8))
        [{'node': 'Conv_0', 'op_type': 'Conv', 'float_us': {1: 10.2, 8: 55.0}, 'int8_us': {1: 29.8, 8: 188.1}}]
    """
    import onnx

    model = onnx.load(str(fp32), load_external_data=False)
    keys, ops = contraction_keys(model), {n.name: n.op_type for n in model.graph.node}
    table: Dict[str, Dict[str, Dict[int, float]]] = {}
    for b in batches:
        x = sample(b)
        f = kernel_times(profile_nodes(fp32, x, threads=threads), keys, int8=False)
        q = kernel_times(profile_nodes(int8, x, threads=threads), keys, int8=True)
        for k in keys:
            if k in f and k in q:
                row = table.setdefault(k, {"float_us": {}, "int8_us": {}})
                row["float_us"][b], row["int8_us"][b] = round(f[k], 2), round(q[k], 2)
    flagged = []
    for k, row in table.items():
        if any(row["int8_us"][b] - row["float_us"][b] > max(MARGIN * row["float_us"][b], MIN_US)
               for b in row["float_us"]):
            flagged.append({"node": k, "op_type": ops.get(k, "?"), **row})
    return flagged


def float_closure(model, float_nodes: Sequence[str]) -> List[str]:
    """``float_nodes`` plus every non-contraction node whose inputs all come from float nodes (so no Q/DQ pair sits
    between two float layers)."""
    producer = {o: n.name for n in model.graph.node for o in n.output}
    keep = set(float_nodes)
    changed = True
    while changed:
        changed = False
        for n in model.graph.node:
            if n.name in keep or n.op_type in CONTRACTIONS or not n.name:
                continue
            sources = [producer[i] for i in n.input if i in producer]
            if sources and all(s in keep for s in sources):
                keep.add(n.name)
                changed = True
    return sorted(keep)


def time_policies(paths: Dict[str, Path], sample: SampleFn, batches: Sequence[int], threads: Optional[int],
                  rounds: int = 7, seconds_per_case: float = 0.3) -> Dict[str, Dict[str, Any]]:
    """``{policy: {batch: {median, p10, p90}}}``: fp32 latency / policy latency per round, paired and interleaved
    (``paths`` holds ``fp32`` first)."""
    from edgekit.backends import default_backend, open_runner
    from edgekit.core.measure.latency import Case, paired_ratios, run_interleaved

    backend = default_backend("onnx", "cpu")
    runners = {name: open_runner(p, backend, threads=threads) for name, p in paths.items()}
    out: Dict[str, Dict[str, Any]] = {name: {} for name in paths if name != "fp32"}
    try:
        for b in progress(list(batches), desc="speed check", total=len(batches)):
            x = sample(b)
            cases = [Case(name, r, r.prepare(x)) for name, r in runners.items()]
            res = run_interleaved(cases, warmup=3, iters=None, min_time=seconds_per_case, rounds=rounds,
                                  desc=f"speed b{b}")
            per_round = res.round_stat("min")
            for i, name in enumerate(paths):
                if name != "fp32":
                    r = paired_ratios(per_round[0], per_round[i])
                    out[name][str(b)] = {"median": round(float(np.median(r)), 3),
                                         "p10": round(float(np.percentile(r, 10)), 3),
                                         "p90": round(float(np.percentile(r, 90)), 3)}
    finally:
        for r in runners.values():
            r.close()
    return out


def pick_fastest(speedups: Dict[str, Dict[str, Any]], allowed: Sequence[str]) -> str:
    """The allowed policy not slower than fp32 at any batch (median ≥ 1) with the best geometric-mean speedup;
    without such a policy, the best geometric mean overall."""
    def geo(name: str) -> float:
        return float(np.exp(np.mean([np.log(max(v["median"], 1e-9)) for v in speedups[name].values()])))

    never_slower = [n for n in allowed if all(v["median"] >= 1.0 for v in speedups[n].values())]
    return max(never_slower or list(allowed), key=geo)


PolicyFn = Callable[[Sequence[str]], Dict[str, Tuple[List[str], Callable[[Path], Path]]]]
# flagged nodes -> {policy name: (nodes it keeps float for speed, build(output path) -> quantised model)}


def choose_speed_policy(fp32: Path, all_int8: Path, make_policies: PolicyFn, sample: SampleFn,
                        batches: Sequence[int], work_dir: Path, *, threads: Optional[int] = 2,
                        accuracy_fn: Optional[Callable[[Path], float]] = None,
                        max_drop: Optional[float] = None) -> SpeedDecision:
    """Profile, build the fallback policies when some node is flagged, time them against fp32, pick the fastest.

    Args:
        fp32 / all_int8: the pre-processed float model and the int8 model quantised as asked.
        make_policies: builds the fallback policies for the flagged nodes (same calibration).
        sample: batch size -> model inputs (calibration samples, cycled).
        batches: batch sizes the speed must hold at.
        accuracy_fn: path -> validation accuracy (%); with ``max_drop`` a policy losing more than ``max_drop``
            points against fp32 is not chosen.

    Returns:
        SpeedDecision (``path`` is the chosen model).
    """
    import time

    t0 = time.perf_counter()
    flagged = flag_slow_nodes(fp32, all_int8, sample, batches)
    paths: Dict[str, Path] = {"fp32": fp32, "all-int8": all_int8}
    floats: Dict[str, List[str]] = {"all-int8": []}
    if flagged:
        logger.info(f"speed check: int8 slower than float at {[f['node'] for f in flagged]}; trying fallbacks")
        for i, (name, (float_nodes, build)) in enumerate(make_policies([f["node"] for f in flagged]).items()):
            paths[name], floats[name] = build(work_dir / f"speed_{i}.onnx"), list(float_nodes)
    speedups = time_policies(paths, sample, batches, threads)
    allowed = list(speedups)
    accuracy: Dict[str, float] = {}
    if accuracy_fn is not None:
        accuracy = {name: round(accuracy_fn(p), 3) for name, p in paths.items()}
        if max_drop is not None:
            allowed = [n for n in allowed if accuracy["fp32"] - accuracy[n] <= max_drop] or ["all-int8"]
    policy = pick_fastest(speedups, allowed)
    slower = [int(b) for b, v in speedups[policy].items() if v["median"] < 1.0]
    if slower:
        logger.warning(f"int8 ({policy}) is slower than fp32 at batch {slower} on this CPU "
                       f"({', '.join(str(speedups[policy][str(b)]['median']) for b in slower)}x)")
    return SpeedDecision(policy, [int(b) for b in batches], flagged, floats[policy], speedups, accuracy, slower,
                         paths[policy], time.perf_counter() - t0)
