"""The 'ort-cuda' backend: ONNX Runtime's CUDA execution provider with I/O binding (inputs placed untimed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from edgekit.backends.base import BackendSpec, register_backend
from edgekit.backends.ort import OrtRunner
from edgekit.errors import BackendUnavailableError


class OrtDeviceRunner(OrtRunner):
    """ONNX Runtime with I/O binding: inputs are placed on the device in ``prepare`` (untimed).

    ``device_type="cuda"`` for 'ort-cuda'; ``"cpu"`` exercises the same code path on any machine.

    Example:
        >>> runner = OrtDeviceRunner("model.onnx", ["CUDAExecutionProvider"], device_type="cuda")
    """

    def __init__(self, path: str, providers: list, threads: Optional[int] = None, backend: str = "ort-cuda",
                 device_type: str = "cuda", device_id: int = 0):
        super().__init__(path, providers, threads, backend=backend)
        want = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if want not in self.session.get_providers():
            raise BackendUnavailableError(f"{path}: ONNX Runtime fell back to {self.session.get_providers()} instead "
                                          f"of {want} (CUDA/cuDNN libraries missing or mismatched?)")
        self.device_type, self.device_id = device_type, device_id
        self.info["device"] = device_type

    def prepare(self, x: Any):
        import onnxruntime as ort

        arrays = self.feeds(super().prepare(x))
        return {name: ort.OrtValue.ortvalue_from_numpy(arr, self.device_type, self.device_id)
                for name, arr in arrays.items()}

    def run_prepared(self, prepared):
        binding = self.session.io_binding()
        for name, value in prepared.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self.output_name, self.device_type, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0]

    def to_numpy(self, out) -> np.ndarray:
        return out.numpy()


def _probe_ort_cuda() -> Tuple[bool, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "package 'onnxruntime-gpu' is not installed (pip install onnxruntime-gpu)"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (CPU build); "
                       "pip install onnxruntime-gpu instead of onnxruntime")
    from edgekit.core.platform import cuda_driver_info

    drv = cuda_driver_info()
    if drv["error"]:
        return False, f"onnxruntime has CUDAExecutionProvider but {drv['error']}"
    return True, ""


def _open_ort_cuda(artifact: Any, threads: Optional[int] = None, device_id: int = 0, **_: Any) -> OrtDeviceRunner:
    providers = [("CUDAExecutionProvider", {"device_id": int(device_id)}), "CPUExecutionProvider"]
    return OrtDeviceRunner(str(Path(artifact)), providers, threads, "ort-cuda", "cuda", int(device_id))



def _describe_ort_cuda() -> dict:
    import onnxruntime as ort

    from edgekit.core.platform import gpu_facts

    return {"version": ort.__version__, "devices": [d["name"] for d in gpu_facts()["devices"]],
            "providers": list(ort.get_available_providers())}


register_backend(BackendSpec(
    "ort-cuda", ("onnx",), _probe_ort_cuda, _open_ort_cuda, "cuda",
    "ONNX Runtime, CUDA execution provider (onnxruntime-gpu), I/O binding",
    suffixes={"onnx": (".onnx",)}, precisions=("fp32", "fp16"), quant_target="tensorrt", channel_alignment=8,
    title="ONNX Runtime CUDA", describe=_describe_ort_cuda, contrib_ops=("*",)))
