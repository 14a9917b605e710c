"""PyTorch eager runners: 'torch' (CPU fp32, the product's float baseline) and 'torch-cuda'.

torch's intra-op thread count is process-wide. A runner opened with ``threads=N`` sets it to N around each
call and restores the previous count right after, so opening or running a runner never changes what the
rest of the process (training, other runners) sees. Measured on the 2-core test machine (ResNet-8, batch 1,
~0.43 ms per call): the set/restore pair costs ~0.35 µs, and the fastest call was the same with and without
it (0.425 vs 0.424 ms), even when the count changes on every call. Restoring on ``close()`` instead would
let two open runners with different counts run each other's count.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np
import torch

from edgekit.backends.base import BackendSpec, Runner, artifact_kind, register_backend


class TorchRunner(Runner):
    """Eager PyTorch inference under ``torch.inference_mode``."""

    def __init__(self, module: torch.nn.Module, device: str = "cpu", precision: str = "fp32",
                 threads: Optional[int] = None, input_shape=None, signature: Any = None):
        super().__init__()
        from edgekit.errors import ConfigError

        if precision not in ("fp32", "fp16"):
            raise ConfigError(f"torch precision must be 'fp32' or 'fp16', got '{precision}'")
        if precision == "fp16" and device == "cpu":
            raise ConfigError("fp16 eager inference is only offered on CUDA (backend 'torch-cuda')")
        self.threads = int(threads) if threads and device == "cpu" else None
        self.device = torch.device(device)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        if self.device.type != "cpu" or precision != "fp32":
            module = copy.deepcopy(module)  # never convert the caller's model in place
        self.module = module.eval().to(self.device, dtype=self.dtype)
        self.backend = "torch" if device == "cpu" else "torch-cuda"
        if input_shape is not None:
            self.input_shape = (None, *input_shape)
        if signature is not None:  # named, typed inputs (checkpoint meta): called as module(**inputs)
            from edgekit.core.signature import Signature

            self.set_signature(signature if isinstance(signature, Signature) else Signature.from_dict(signature))
        self.info = {
            "backend": self.backend,
            "precision": precision,
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "threads": (self.threads or torch.get_num_threads()) if device == "cpu" else None,
            "versions": {"torch": torch.__version__},
        }
        if self.device.type == "cuda":  # PyTorch may use TF32 for fp32 convs/matmuls; say so next to its timings
            self.info["tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32,
                                 "matmul": torch.backends.cuda.matmul.allow_tf32}

    def check_input(self, x: Any) -> None:
        """As every runner; a module without a signature also takes named inputs (called as ``module(**x)``)."""
        if self.signature is None and isinstance(x, dict):
            return
        super().check_input(x)

    def prepare(self, x: Any) -> Any:
        from edgekit.core.tensors import to_torch

        if self.signature is not None:
            x = super().prepare(x)  # integer widths as the signature declares
        return to_torch(x, self.device, self.dtype)

    def run_prepared(self, prepared: Any) -> torch.Tensor:
        from edgekit.core.tensors import call_module, prediction

        previous = torch.get_num_threads()
        switch = self.threads is not None and self.threads != previous
        if switch:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                out = call_module(self.module, prepared)
        finally:
            if switch:
                torch.set_num_threads(previous)
        return prediction(out, self.signature.output if self.signature is not None else None)

    def to_numpy(self, out: torch.Tensor) -> np.ndarray:
        return out.float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _load_module(artifact: Any):
    """(module, per-sample input shape, signature dict) of a module or an edgekit checkpoint."""
    if artifact_kind(artifact) == "module":
        return artifact, None, None
    from edgekit.models import load_checkpoint

    model, meta = load_checkpoint(artifact)
    return model, meta.get("input_shape"), meta.get("signature")


def _open_cpu(artifact: Any, threads: Optional[int] = None, precision: str = "fp32", signature: Any = None,
              **_: Any) -> TorchRunner:
    module, shape, stored = _load_module(artifact)
    return TorchRunner(module, "cpu", precision, threads, shape, signature or stored)


def _open_cuda(artifact: Any, threads: Optional[int] = None, precision: str = "fp32", signature: Any = None,
               **_: Any) -> TorchRunner:
    module, shape, stored = _load_module(artifact)
    return TorchRunner(module, "cuda", precision, None, shape, signature or stored)


def _probe_cpu():
    return True, ""


def _probe_cuda():
    if not torch.cuda.is_available():
        build = torch.version.cuda
        if build is None:
            return False, f"PyTorch {torch.__version__} is a CPU-only build (no CUDA support compiled in)"
        return False, f"PyTorch built with CUDA {build} but no CUDA device/driver is visible"
    return True, ""


def _describe_cpu() -> dict:
    return {"version": torch.__version__, "devices": ["cpu"], "threads": torch.get_num_threads()}


def _describe_cuda() -> dict:
    from edgekit.core.platform import gpu_facts

    return {"version": torch.__version__, "cuda": torch.version.cuda,
            "devices": [d["name"] for d in gpu_facts()["devices"]]}


_CHECKPOINTS = {"checkpoint": (".pt", ".pth", ".ckpt")}
register_backend(BackendSpec(
    "torch", ("module", "checkpoint"), _probe_cpu, _open_cpu, "cpu", "PyTorch eager on CPU (fp32): the float baseline",
    priority=0, suffixes=_CHECKPOINTS, quant_target="cpu", channel_alignment=8, float_baseline=True,
    title="PyTorch eager fp32", describe=_describe_cpu))
register_backend(BackendSpec(
    "torch-cuda", ("module", "checkpoint"), _probe_cuda, _open_cuda, "cuda",
    "PyTorch eager on CUDA (fp32, or fp16 with precision='fp16')", suffixes=_CHECKPOINTS,
    precisions=("fp32", "fp16"), quant_target="tensorrt", channel_alignment=8, title="PyTorch eager CUDA",
    describe=_describe_cuda))
