"""`edgekit doctor`: which backends can run here, and if not, why.

The same probes decide what ``edgekit bench`` and recipes can run (``BackendSpec.probe``); this
module gathers them with the GPU, driver, CPU and version facts into one report.

Example:
    >>> report = doctor_report()
    >>> {b["name"]: b["available"] for b in report["backends"]}
    >>> print(format_report(report))
"""
from __future__ import annotations

from typing import Optional


def _probe(spec) -> tuple:
    try:
        ok, reason = spec.probe()
    except Exception as e:  # a probe must never take the report down
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return False, f"probe failed: {type(e).__name__}: {first}"
    return bool(ok), "" if ok else (reason or "unavailable (no reason given)")


def backend_statuses() -> list:
    """One dict per registered backend: name, available, reason, device, artifact kinds, description.

    Example:
        >>> [b["name"] for b in backend_statuses() if not b["available"]]
        ['torch-cuda', 'ort-cuda', 'tensorrt']
    """
    from edgekit.backends import _builtin  # noqa: F401  (fills the registry)
    from edgekit.backends.base import BACKENDS

    order = {n: i for i, n in enumerate(("torch", "torch-cuda", "ort-cpu", "ort-cuda", "tensorrt"))}
    rows = []
    for name, spec in sorted(BACKENDS.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
        ok, reason = _probe(spec)
        rows.append({"name": name, "available": ok, "reason": reason, "device": spec.device,
                     "artifact_kinds": list(spec.artifact_kinds), "description": spec.description})
    return rows


def doctor_report() -> dict:
    """Everything ``edgekit doctor`` shows, as a JSON-serialisable dict.

    Returns:
        ``{"backends": [...], "gpu": core.platform.gpu_facts(), "runtimes": {module: {"version", "reason"}},
        "onnxruntime": {"version", "providers"}, "environment": core.platform.environment()}``.

    Example:
        >>> doctor_report()["runtimes"]
    """
    from edgekit.core.platform import RUNTIMES, environment, gpu_facts, runtime_status

    runtimes = {}
    for name in RUNTIMES:
        version, reason = runtime_status(name)
        runtimes[name] = {"version": version, "reason": reason}
    try:
        import onnxruntime as ort

        ort_facts = {"version": ort.__version__, "providers": list(ort.get_available_providers())}
    except Exception as e:
        ort_facts = {"version": None, "providers": [], "reason": f"{type(e).__name__}: {e}"}
    return {"backends": backend_statuses(), "gpu": gpu_facts(), "runtimes": runtimes, "onnxruntime": ort_facts,
            "environment": environment()}


def _or(value: Optional[object], missing: str = "not installed") -> str:
    return missing if value in (None, "") else str(value)


def format_report(report: dict) -> str:
    """Human-readable text of ``doctor_report()``: backends first, then GPU, CPU and versions.

    Example:
        >>> print(format_report(doctor_report()))
    """
    width = max(len(b["name"]) for b in report["backends"]) + 2
    lines = ["Backends"]
    for b in report["backends"]:
        state = "available" if b["available"] else "unavailable"
        note = b["description"] if b["available"] else b["reason"]
        lines.append(f"  {b['name']:<{width}}{state:<13}{b['device']:<6}{note}")
    gpu, drv, env = report["gpu"], report["gpu"]["driver"], report["environment"]
    lines += ["", "GPU",
              f"  PyTorch CUDA build: {_or(gpu['torch_cuda_build'], 'none (CPU-only build)')}",
              "  NVIDIA driver:      " + (f"supports CUDA {_or(drv['driver_cuda_version'], '?')}, {drv['device_count']} device(s)"
                                          if drv["loaded"] else drv["error"])]
    if gpu["devices"]:
        lines += [f"  device {d['index']}: {d['name']} (compute capability {d['compute_capability']}, "
                  f"{d['memory_gb']} GB)" for d in gpu["devices"]]
    else:
        lines.append(f"  no usable CUDA device: {gpu['unavailable_reason']}")
    lines += ["", "Runtimes"]
    lines += [f"  {name:<12}{rt['version'] or 'unavailable: ' + rt['reason']}" for name, rt in report["runtimes"].items()]
    lines += ["", "CPU",
              f"  model:  {env.get('cpu_model')}",
              f"  cores:  {env.get('cores_logical')} logical, {env.get('cores_physical')} physical, "
              f"{env.get('cores_usable', env.get('cores_logical'))} usable; memory {env.get('memory_gb')} GB",
              f"  ISA:    {' '.join(env.get('isa_flags') or []) or 'none of the tracked flags'}",
              "", "Versions"]
    lines += [f"  {k:<12}{_or(v)}" for k, v in (env.get("versions") or {}).items()]
    lines.append(f"  {'ort EPs':<12}{', '.join(report['onnxruntime'].get('providers') or []) or 'none'}")
    lines += ["", f"Platform: {env.get('platform')}"]
    return "\n".join(lines)
