"""The benchmark result: rows per model x backend x batch, environment, peaks; JSON / CSV / Markdown.

Example:
    >>> res.write("bench_out")          # bench.json, bench.csv, bench.md, latency.png, ...
    >>> print(res.to_markdown())
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgekit._io import write_json_atomic, write_text_atomic

SCHEMA = "edgekit-bench/1"

CSV_COLUMNS = ["model", "backend", "batch", "sequence", "baseline", "precision", "device", "threads", "p50_ms",
               "p90_ms", "p99_ms",
               "mean_ms", "std_ms", "min_ms", "round_ms", "iters", "rounds", "throughput", "size_bytes", "mem_delta_mb",
               "macs",
               "int8_macs", "gops", "peak_gops", "efficiency", "accuracy", "speedup", "speedup_min", "speedup_max",
               "speedup_ci_low", "speedup_ci_high", "accuracy_delta", "accuracy_delta_ci_low",
               "accuracy_delta_ci_high", "mcnemar_p", "speedup_rounds", "artifact"]


_ROUND_STAT_TEXT = {"min": "fastest iteration", "p25": "25th percentile", "median": "median"}


def format_speedup(row: dict) -> str:
    """``3.21× (3.05–3.40)``: median per-round ratio and its min–max; the baseline reads ``1.00× (baseline)``."""
    if row.get("baseline"):
        return "1.00× (baseline)"
    if row.get("speedup") is None:
        return "–"
    ci = row.get("speedup_ci")
    return (f"{row['speedup']:.2f}× ({row['speedup_min']:.2f}–{row['speedup_max']:.2f})"
            + (f" [CI {ci[0]:.2f}–{ci[1]:.2f}]" if ci else ""))


def format_accuracy_delta(row: dict) -> str:
    """``-0.31 [-1.20, +0.56]``: accuracy difference vs the baseline in points, paired over the same samples, with
    its 95 % bootstrap CI; ``–`` for the baseline or without labelled data."""
    ci = row.get("accuracy_delta_ci")
    if row.get("accuracy_delta") is None or not ci:
        return "–"
    return f"{row['accuracy_delta']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    return "–" if v is None else format(v * scale, spec)


@dataclass
class BenchResult:
    """Rows (one dict per model x backend x batch) plus what is needed to trust them."""

    rows: List[dict]
    skipped: List[dict] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    peak: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    # -- access ---------------------------------------------------------------------------------
    def row(self, model: str, backend: Optional[str] = None, batch: Optional[int] = None) -> dict:
        """The first row matching ``model`` (and ``backend`` / ``batch`` when given)."""
        for r in self.rows:
            if r["model"] == model and backend in (None, r["backend"]) and batch in (None, r["batch"]):
                return r
        raise KeyError(f"no row for model={model} backend={backend} batch={batch}")

    def ordered_rows(self) -> List[dict]:
        """Rows grouped by (sequence and) batch, the baseline row first in each group, then in benchmark order."""
        out = []
        for g in sorted({(r.get("sequence") or 0, r["batch"]) for r in self.rows}):
            group = [r for r in self.rows if (r.get("sequence") or 0, r["batch"]) == g]
            out += [r for r in group if r.get("baseline")] + [r for r in group if not r.get("baseline")]
        return out

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        from edgekit import __version__

        return {"schema": SCHEMA, "edgekit": __version__, "created": self.created, "baseline": self.baseline,
                "config": self.config, "environment": self.environment, "peak": self.peak,
                "rows": self.rows, "skipped": self.skipped}

    def to_json(self) -> str:
        """The result as a JSON document (schema ``edgekit-bench/1``)."""
        from edgekit._io import _json_default

        return json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> BenchResult:
        """Rebuild a result from ``to_dict()`` output (e.g. a loaded bench.json)."""
        from edgekit.errors import InputFileError

        if d.get("schema") != SCHEMA:
            raise InputFileError(f"not an edgekit benchmark result (schema {d.get('schema')!r}, expected {SCHEMA})")
        return cls(rows=d["rows"], skipped=d.get("skipped", []), environment=d.get("environment", {}),
                   peak=d.get("peak", {}), config=d.get("config", {}), baseline=d.get("baseline", {}),
                   created=d.get("created", ""))

    def to_csv(self) -> str:
        """One CSV line per row; ``speedup_rounds`` joined with ';'."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.ordered_rows():
            r = dict(r)
            r["speedup_rounds"] = ";".join(f"{v:.4f}" for v in r.get("speedup_rounds") or [])
            r["speedup_ci_low"], r["speedup_ci_high"] = r.get("speedup_ci") or (None, None)
            r["accuracy_delta_ci_low"], r["accuracy_delta_ci_high"] = r.get("accuracy_delta_ci") or (None, None)
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
        return buf.getvalue()

    def table(self) -> str:
        """The Markdown results table alone (baseline row first per batch, speedups with spread)."""
        has_acc = any(r.get("accuracy") is not None for r in self.rows)
        head = ["model", "backend", "batch", "precision", "p50 ms", "p90 ms", "p99 ms", "samples/s", "size MB",
                "MMACs", "GOP/s", "% peak"] + (["acc %", "Δ acc pt [95% CI]"] if has_acc else [])
        head += ["speedup (min–max) [95% CI]"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.ordered_rows():
            batch = f"{r['batch']} × seq {r['sequence']}" if r.get("sequence") else str(r["batch"])
            cells = [f"**{r['model']}**" if r.get("baseline") else r["model"], r["backend"], batch,
                     r.get("precision") or "–", _fmt(r["p50_ms"], ".3f"), _fmt(r["p90_ms"], ".3f"),
                     _fmt(r["p99_ms"], ".3f"), _fmt(r["throughput"], ",.0f"), _fmt(r.get("size_bytes"), ".2f", 2**-20),
                     _fmt(r.get("macs"), ",.1f", 1e-6), _fmt(r.get("gops"), ".1f"),
                     _fmt(r.get("efficiency"), ".1f", 100)]
            if has_acc:
                cells += [_fmt(r.get("accuracy"), ".2f"), format_accuracy_delta(r)]
            cells.append(format_speedup(r))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def environment_line(self) -> str:
        """One line: CPU, ISA, cores, GPU, versions, threads and the measured GEMM peaks."""
        e, v = self.environment, self.environment.get("versions", {})
        isa = ", ".join(f for f in e.get("isa_flags", []) if f.startswith(("avx512", "amx", "avx_vnni"))) or "–"
        gpu = f"; GPU {e['gpu']} (sm {e.get('gpu_compute_capability')})" if e.get("gpu") else ""
        vers = ", ".join(f"{k} {val}" for k, val in v.items() if val)
        tenv = "".join(f"; {k}={val}" for k, val in (e.get("threading_env") or {}).items())
        cores = e.get("cores_usable", e.get("cores_logical"))
        line = (f"{e.get('cpu_model', '?')} ({cores} usable cores; {isa}){gpu}; "
                f"{self.config.get('threads')} threads{tenv}; {vers}.")
        cpu, gpu_peak = (self.peak or {}).get("cpu"), (self.peak or {}).get("gpu")
        if cpu:
            sz = cpu.get("sizes", {})
            line += (f" CPU GEMM peak measured in the same rounds (ONNX Runtime): fp32 "
                     f"{_fmt(cpu.get('fp32_gops'), ',.0f')} GOP/s ({sz.get('fp32')}³), u8×s8 "
                     f"{_fmt(cpu.get('int8_gops'), ',.0f')} GOP/s ({sz.get('int8')}³).")
        if gpu_peak:
            line += (f" GPU GEMM peak: fp32 {_fmt(gpu_peak.get('fp32_gops'), ',.0f')}, fp16 "
                     f"{_fmt(gpu_peak.get('fp16_gops'), ',.0f')}, int8 "
                     f"{_fmt(gpu_peak.get('int8_gops'), ',.0f')} GOP/s.")
        return line

    def load_warning(self) -> Optional[str]:
        """A warning when the machine was busier than its cores during the run (absolute times unreliable)."""
        loads = [v for v in self.config.get("load_avg_1m") or [] if v is not None]
        cores = self.environment.get("cores_usable") or self.environment.get("cores_logical")
        if not loads or not cores or max(loads) <= cores:
            return None
        tenv = self.environment.get("threading_env", {})
        hint = "" if {"OMP_WAIT_POLICY", "KMP_BLOCKTIME"} & set(tenv) else (
            " Multi-threaded PyTorch degrades worst while OpenMP workers spin: KMP_BLOCKTIME=0 (Intel OpenMP, as "
            "the edgekit CLI sets it) or OMP_WAIT_POLICY=PASSIVE (GNU OpenMP; ~2× slower eager PyTorch on a quiet "
            "machine) limits the damage.")
        return (f"Warning: load average {max(loads):.1f} on {cores} usable cores during this run: other processes "
                "competed for the CPU, so absolute latencies are inflated and multi-threaded runs suffer most "
                f"(fewer --threads, more --rounds help); paired ratios are more robust than raw times.{hint}")

    def to_markdown(self, title: str = "Benchmark") -> str:
        """A readable report: settings, environment, the table, skipped combinations."""
        c = self.config
        timing = f"{c.get('iters')} iterations" if c.get("iters") else f"≥ {c.get('min_time')} s"
        parts = [f"## {title}", "",
                 f"Baseline: **{self.baseline.get('model')}** on {self.baseline.get('backend')}. "
                 f"Warm-up {c.get('warmup')} iterations, then {timing} per case in {c.get('rounds')} interleaved "
                 f"rounds; speedup = median of per-round ratios (min–max over rounds; per-round latency = the block's "
                 f"{_ROUND_STAT_TEXT.get(c.get('round_stat'), 'median')}) with a 95 % bootstrap confidence interval "
                 "of that median. "
                 "GOP/s = 2 × MACs × batch / per-round latency; % peak = that over the GEMM peak of the same "
                 "precision measured in the same round (medians over rounds).", "",
                 self.environment_line(), ""]
        warning = self.load_warning()
        if warning:
            parts += [f"> {warning}", ""]
        parts += [self.table(), ""]
        if self.skipped:
            parts += (["Skipped:", ""] + [f"- {s['model']} on {s['backend']}: {s['reason']}" for s in self.skipped]
                      + [""])
        return "\n".join(parts)

    def write(self, out_dir: str | os.PathLike, plots: bool = True) -> Dict[str, Path]:
        """Write bench.json, bench.csv, bench.md (and PNG plots) into ``out_dir``, each atomically.

        Example:
            >>> paths = res.write("bench_out")
            >>> paths["json"]
            PosixPath('bench_out/bench.json')
        """
        out = Path(out_dir)
        paths = {"json": write_json_atomic(out / "bench.json", self.to_dict()),
                 "csv": write_text_atomic(out / "bench.csv", self.to_csv())}
        images: Dict[str, Path] = {}
        if plots:
            from edgekit.bench.plots import write_plots

            images = write_plots(self, out)
        md = self.to_markdown()
        if images:
            md += "\n" + "\n".join(f"![{k}]({p.name})" for k, p in images.items()) + "\n"
        paths["md"] = write_text_atomic(out / "bench.md", md)
        paths.update(images)
        return paths
