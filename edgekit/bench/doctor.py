"""`edgekit doctor`: which backends can run here, and if not, why.

The same probes decide what ``edgekit bench`` and recipes can run (``BackendSpec.probe``); each available
backend describes itself (``BackendSpec.describe``: version, devices, ...), and the machine facts come from
``edgekit.core.platform``. Nothing here names a backend.

Example:
    >>> report = doctor_report()
    >>> {b["name"]: b["available"] for b in report["backends"]}
    >>> print(format_report(report))
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple


def _safely(fn: Callable[[], Any], what: str) -> Tuple[Any, str]:
    """``(fn(), "")``, or ``(None, "<what> failed: Type: first line")``: a backend must never take the report down."""
    try:
        return fn(), ""
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return None, f"{what} failed: {type(e).__name__}: {first}"


def _probe(spec) -> Tuple[bool, str]:
    result, error = _safely(spec.probe, "probe")
    if error:
        return False, error
    ok, reason = result
    return bool(ok), "" if ok else (reason or "unavailable (no reason given)")


def backend_statuses() -> list:
    """One dict per registered backend: name, available, reason, device, artifact kinds, description, details.

    ``details`` is what an available backend's ``describe()`` says (version, devices, ...), else ``{}``.
    Order: CPU backends first, then by priority and name.

    Example:
        >>> [b["name"] for b in backend_statuses() if not b["available"]]   # the GPU ones on a CPU-only machine
    """
    from edgekit.backends import BACKENDS, load_backends

    load_backends()
    rows = []
    for name, spec in sorted(BACKENDS.items(), key=lambda kv: (kv[1].device != "cpu", kv[1].priority, kv[0])):
        ok, reason = _probe(spec)
        details: dict = {}
        if ok and spec.describe is not None:
            described, error = _safely(spec.describe, "describe")
            details = dict(described) if isinstance(described, dict) else {"error": error or "describe() gave no dict"}
        rows.append({"name": name, "available": ok, "reason": reason, "device": spec.device, "title": spec.label,
                     "artifact_kinds": list(spec.artifact_kinds), "precisions": list(spec.precisions),
                     "quant_target": spec.quant_target, "description": spec.description, "details": details})
    return rows


def doctor_report() -> dict:
    """Everything ``edgekit doctor`` shows, as a JSON-serialisable dict.

    Returns:
        ``{"backends": [...], "gpu": core.platform.gpu_facts(), "runtimes": {module: {"version", "reason"}},
        "environment": core.platform.environment()}``.

    Example:
        >>> doctor_report()["runtimes"]
    """
    from edgekit.core.platform import RUNTIMES, environment, gpu_facts, runtime_status

    runtimes = {}
    for name in RUNTIMES:
        version, reason = runtime_status(name)
        runtimes[name] = {"version": version, "reason": reason}
    return {"backends": backend_statuses(), "gpu": gpu_facts(), "runtimes": runtimes, "environment": environment()}


def _or(value: Optional[object], missing: str = "not installed") -> str:
    return missing if value in (None, "") else str(value)


def _details_line(details: dict) -> str:
    """``version 1.2; devices: CPU (AMD EPYC); providers: ...`` from a backend's describe()."""
    parts = [f"version {details['version']}"] if details.get("version") else []
    for key, value in details.items():
        if key == "version" or value in (None, "", [], {}):
            continue
        shown = ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"{key}: {shown}")
    return "; ".join(parts)


def format_report(report: dict) -> str:
    """Human-readable text of ``doctor_report()``: backends first, then GPU, runtimes, CPU and versions.

    Example:
        >>> print(format_report(doctor_report()))
    """
    width = max(len(b["name"]) for b in report["backends"]) + 2
    lines = ["Backends"]
    for b in report["backends"]:
        state = "available" if b["available"] else "unavailable"
        note = b["description"] if b["available"] else b["reason"]
        lines.append(f"  {b['name']:<{width}}{state:<13}{b['device']:<6}{note}")
        if b.get("details"):
            lines.append(f"  {'':<{width}}{'':<13}{'':<6}{_details_line(b['details'])}")
    gpu, drv, env = report["gpu"], report["gpu"]["driver"], report["environment"]
    driver = (f"supports CUDA {_or(drv['driver_cuda_version'], '?')}, {drv['device_count']} device(s)"
              if drv["loaded"] else drv["error"])
    lines += ["", "GPU", f"  PyTorch CUDA build: {_or(gpu['torch_cuda_build'], 'none (CPU-only build)')}",
              f"  NVIDIA driver:      {driver}"]
    if gpu["devices"]:
        lines += [f"  device {d['index']}: {d['name']} (compute capability {d['compute_capability']}, "
                  f"{d['memory_gb']} GB)" for d in gpu["devices"]]
    else:
        lines.append(f"  no usable CUDA device: {gpu['unavailable_reason']}")
    lines += ["", "Runtimes"]
    lines += [f"  {name:<12}{rt['version'] or 'unavailable: ' + rt['reason']}"
              for name, rt in report["runtimes"].items()]
    lines += ["", "CPU",
              f"  model:  {env.get('cpu_model')}",
              f"  cores:  {env.get('cores_logical')} logical, {env.get('cores_physical')} physical, "
              f"{env.get('cores_usable', env.get('cores_logical'))} usable; memory {env.get('memory_gb')} GB",
              f"  ISA:    {' '.join(env.get('isa_flags') or []) or 'none of the tracked flags'}",
              "", "Versions"]
    lines += [f"  {k:<12}{_or(v)}" for k, v in (env.get("versions") or {}).items()]
    lines += ["", f"Platform: {env.get('platform')}"]
    return "\n".join(lines)
