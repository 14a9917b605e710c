"""The 'openvino' backend: OpenVINO on its CPU device, for edgekit's ONNX artifacts and OpenVINO IR.

Runs fp32 ONNX, the ``cpu``-target QDQ int8 ONNX (OpenVINO turns Q/DQ pairs into its own int8 kernels) and
OpenVINO IR (``.xml`` with its ``.bin`` beside it) through the same ``Runner`` interface as every backend.
Compiled for latency (``PERFORMANCE_HINT=LATENCY``: one stream, one request) with an explicit thread count
(``INFERENCE_NUM_THREADS``); both are read back from the compiled model into ``runner.info``.

Float layers run in fp32 unless asked otherwise: OpenVINO's CPU plugin would pick bf16 by itself on CPUs with
bf16 instructions (it did on the AVX-512 EPYC here), which is another precision than the artifact's. Pass
``precision="bf16"`` to opt in. The ``compile`` hook saves the ONNX as IR (``.xml/.bin``, weights kept as they
are) with a sidecar, so a recipe's ``compile`` stage can ship IR.

Example:
    >>> with open_runner("model.int8.onnx", backend="openvino", threads=2) as runner:
    ...     logits = runner(x)
    ...     runner.info["precision"], runner.info["performance_hint"], runner.info["threads"]
    ('int8', 'LATENCY', 2)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from edgekit.backends.base import BackendSpec, Runner, artifact_kind, register_backend
from edgekit.errors import ConfigError, InputFileError, first_line

IR_FORMAT = "edgekit-openvino-ir/1"
DEVICE = "CPU"
# precision option -> OpenVINO INFERENCE_PRECISION_HINT for the layers that are not quantised
_INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def _runtime_version() -> Optional[str]:
    from edgekit.core.platform import runtime_status

    return runtime_status("openvino")[0]


def _weights_of(xml: Path) -> Path:
    return xml.with_suffix(".bin")


def _read_model(core: Any, path: Path):
    """The ``ov.Model`` of an ONNX file or an IR ``.xml`` (whose ``.bin`` must sit beside it)."""
    if artifact_kind(path) == "openvino-ir" and not _weights_of(path).is_file():
        raise InputFileError(f"{path}: OpenVINO IR needs its weights file {_weights_of(path).name} beside it; "
                             "not found")
    try:
        return core.read_model(str(path))
    except Exception as e:  # OpenVINO raises RuntimeError/GeneralFailure with the frontend's message
        raise InputFileError(f"{path}: OpenVINO cannot read this model: {first_line(e, 240)}") from None


def _compile(core: Any, model: Any, path: Any, precision_hint: Any, threads: Optional[int]) -> Any:
    """The model compiled for latency on the CPU with the given inference precision and thread count."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision_hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        return core.compile_model(model, DEVICE, config)
    except Exception as e:
        raise InputFileError(f"{path}: OpenVINO cannot compile this model for {DEVICE}: {first_line(e, 240)}") \
            from None


def _ir_precision(model: Any, path: Path) -> str:
    """An IR's precision: its sidecar's, else 'int8' when it holds FakeQuantize (OpenVINO's int8 form)."""
    from edgekit._io import read_sidecar

    recorded = read_sidecar(path).get("precision")
    if recorded:
        return str(recorded)
    return "int8" if any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops()) else "fp32"


def _artifact_precision(model: Any, path: Path) -> str:
    if artifact_kind(path) == "onnx":
        from edgekit.core.onnx_graph import onnx_precision

        return onnx_precision(path)
    return _ir_precision(model, path)


class OpenVinoRunner(Runner):
    """An OpenVINO CPU compiled model with one infer request; numpy in, numpy out.

    Example:
        >>> runner = OpenVinoRunner("model.onnx", threads=2)
        >>> runner(np.zeros((1, 3, 32, 32), np.float32)).shape
    """

    backend = "openvino"

    def __init__(self, path: str, threads: Optional[int] = None, precision: Optional[str] = None):
        super().__init__()
        import openvino as ov

        path_ = Path(path)
        core = ov.Core()
        model = _read_model(core, path_)
        stored = _artifact_precision(model, path_)
        hint = self._inference_precision(path, stored, precision)
        self.compiled = _compile(core, model, path, getattr(ov.Type, hint), threads)
        self.request = self.compiled.create_infer_request()
        port = model.inputs[0]
        self.input_name = port.get_any_name()
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        self.input_dtype = np.dtype(port.get_element_type().to_dtype())
        self.set_signature(_signature(model, path_))
        self._port_index = _port_indices(model, self.input_names)
        self.info = {
            "backend": self.backend,
            "precision": "bf16" if hint == "bf16" else stored,
            "device": "cpu",
            "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
            "performance_hint": str(self.compiled.get_property("PERFORMANCE_HINT")),
            "inference_precision": self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "streams": int(self.compiled.get_property("NUM_STREAMS")),
            "cpu_pinning": bool(self.compiled.get_property("ENABLE_CPU_PINNING")),
            "versions": {"openvino": _runtime_version()},
        }

    @staticmethod
    def _inference_precision(path: str, stored: str, precision: Optional[str]) -> str:
        if precision is None:
            return "f32"
        if precision not in _INFERENCE_PRECISION:
            raise ConfigError(f"openvino precision '{precision}' is not supported; allowed: "
                              f"{', '.join(_INFERENCE_PRECISION)} (default: the artifact's own)")
        if stored == "int8" and precision != "fp32":
            raise ConfigError(f"{path} is an int8 artifact; precision '{precision}' applies to float artifacts only")
        return _INFERENCE_PRECISION[precision]

    def run_prepared(self, prepared: Any) -> np.ndarray:
        # inputs are read in place (like ONNX Runtime); outputs are copied out of OpenVINO's buffers
        feeds = ({self._port_index[k]: v for k, v in prepared.items()} if isinstance(prepared, dict)
                 else {0: prepared})
        return self.request.infer(feeds, share_inputs=True)[0]

    def close(self) -> None:
        self.request = None
        self.compiled = None


class OpenVinoCausalLMSession:
    """The ``causal_lm`` hook's session: a KV-cache LM ONNX graph compiled for OpenVINO's CPU device (latency hint,
    fp32 float layers, explicit threads; dynamic batch and past length), all outputs in graph order.

    Outputs are copied out of OpenVINO's buffers, so a step's present tensors stay valid as the next step's past.

    Example:
        >>> sess = OpenVinoCausalLMSession("lm.onnx", threads=1)
        >>> logits, *present = sess.run({"input_ids": ids, "attention_mask": mask, **past})
    """

    def __init__(self, path: Any, threads: Optional[int] = None):
        import openvino as ov

        path_ = Path(path)
        core = ov.Core()
        model = _read_model(core, path_)
        self.compiled = _compile(core, model, path, ov.Type.f32, threads)
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in model.inputs]
        self._port_index = _port_indices(model, self.input_names)
        self._outputs = list(self.compiled.outputs)
        self.info = {"backend": "openvino", "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
                     "versions": {"openvino": _runtime_version()}}

    def run(self, feed: dict) -> list:
        """Every output for ``feed`` (``{input name: array}``), in graph order (copies)."""
        res = self.request.infer({self._port_index[k]: v for k, v in feed.items()}, share_inputs=True)
        return [res[o] for o in self._outputs]


def _signature(model: Any, path: Path):
    """The model's signature: from the ONNX graph (token inputs, vocabulary) or from the IR's input ports.

    OpenVINO may report a port by an alias (``/Concat_output_0``); ONNX names are matched among all its names.
    """
    if artifact_kind(path) == "onnx":
        from edgekit.core.onnx_graph import onnx_signature

        return onnx_signature(path)
    from edgekit.core.signature import InputSpec, Signature, dtype_name

    specs = []
    for port in model.inputs:
        try:
            dtype = dtype_name(np.dtype(port.get_element_type().to_dtype()).name)
        except ConfigError:
            return None  # e.g. uint8 images: one plain array, checked by shape only
        dims = [d.get_length() if d.is_static else ("batch" if i == 0 else f"dim{i}")
                for i, d in enumerate(port.get_partial_shape())]
        specs.append(InputSpec(port.get_any_name(), dtype, tuple(dims) or ("batch",)))
    return Signature(tuple(specs))


def _port_indices(model: Any, names: Any) -> dict:
    """``{input name: port index}``, matching each name among all the names of a port."""
    out = {}
    for name in names:
        idx = next((i for i, p in enumerate(model.inputs) if name in p.get_names()), None)
        if idx is None:
            raise InputFileError(f"OpenVINO reads no input named '{name}'; its inputs are "
                                 f"{[sorted(p.get_names()) for p in model.inputs]}")
        out[name] = idx
    return out


def compile_ir(onnx_path: Any, out_dir: Any, *, precision: Optional[str] = None) -> Path:
    """The backend's ``compile`` hook: save an ONNX artifact as OpenVINO IR (``.xml`` + ``.bin``) in ``out_dir``.

    Weights are saved as they are (no fp16 compression), so the IR computes what the ONNX file computes; an
    int8 QDQ artifact stays int8. ``precision`` may only restate the artifact's own (``fp32`` or ``int8``).
    Both files are written atomically (renamed into place, weights first), with a sidecar beside the ``.xml``
    (source ONNX and its sha256, precision, quantisation target, OpenVINO version).

    Example:
        >>> compile_ir("run/quantize/student-pruned-int8-cpu.onnx", "run/compile")
        PosixPath('run/compile/student-pruned-int8-cpu-int8.xml')
    """
    import openvino as ov

    from edgekit._io import read_sidecar, require_file, sha256_file, write_sidecar
    from edgekit.core.onnx_graph import onnx_precision

    src = require_file(onnx_path, "ONNX model")
    stored = onnx_precision(src)
    if precision not in (None, stored):
        raise ConfigError(f"{src} is {stored}; the OpenVINO compile step saves it as it is (precision {stored}), "
                          f"not {precision}" + (" (quantise with target: cpu first)" if precision == "int8" else ""))
    model = _read_model(ov.Core(), src)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / f"{src.stem}-{stored}.xml"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ir-") as tmp:
        ov.save_model(model, str(Path(tmp) / xml.name), compress_to_fp16=False)
        os.replace(_weights_of(Path(tmp) / xml.name), _weights_of(xml))
        os.replace(Path(tmp) / xml.name, xml)
    source = read_sidecar(src)
    write_sidecar(xml, {"format": IR_FORMAT, "kind": "openvino-ir", "precision": stored, "onnx": str(src.resolve()),
                        "onnx_sha256": sha256_file(src), "openvino_version": _runtime_version(),
                        "bin_sha256": sha256_file(_weights_of(xml)), "compress_to_fp16": False,
                        **{k: source[k] for k in ("target", "quant_scheme", "int8_mac_fraction",
                                                  "int8_mac_fraction_backend") if k in source}})
    return xml


def _open(artifact: Any, threads: Optional[int] = None, precision: Optional[str] = None,
          **options: Any) -> OpenVinoRunner:
    if options:
        raise ConfigError(f"unknown openvino option(s) {sorted(options)}; allowed: precision "
                          f"({', '.join(_INFERENCE_PRECISION)})")
    return OpenVinoRunner(str(artifact), threads, precision)


def _probe() -> Tuple[bool, str]:
    version = _runtime_version()
    if version is None:
        from edgekit.core.platform import runtime_status

        return False, runtime_status("openvino")[1]
    try:
        import openvino as ov

        devices = ov.Core().available_devices
    except Exception as e:
        return False, f"OpenVINO {version} is installed but its Core cannot start: {first_line(e, 200)}"
    if DEVICE not in devices:
        return False, f"OpenVINO {version} sees no {DEVICE} device (devices: {', '.join(devices) or 'none'})"
    return True, ""


def _describe() -> dict:
    import openvino as ov

    core = ov.Core()
    return {"version": _runtime_version(),
            "devices": [f"{d} ({core.get_property(d, 'FULL_DEVICE_NAME')})" for d in core.available_devices]}


register_backend(BackendSpec(
    "openvino", ("openvino-ir", "onnx"), _probe, _open, "cpu",
    "OpenVINO on its CPU device: ONNX (fp32, QDQ int8) and IR, latency hint, fp32 float layers", priority=110,
    suffixes={"openvino-ir": (".xml",), "onnx": (".onnx",)}, companions={"openvino-ir": (".bin",)},
    precisions=("fp32", "bf16", "int8"),
    quant_target="cpu",  # OpenVINO runs the U8S8 QDQ artifacts made for x86 CPUs as its own int8 kernels
    channel_alignment=16,  # oneDNN's CPU kernels block channels by 16 on AVX-512 (8 on AVX2)
    title="OpenVINO CPU", tag="ov", describe=_describe, compile=compile_ir, causal_lm=OpenVinoCausalLMSession,
    # its ONNX frontend reads these fused fp32 ops (checked on a BERT), not ORT's int8 ones (QAttention)
    contrib_ops=("Attention", "BiasGelu", "EmbedLayerNormalization", "FastGelu", "Gelu", "SkipLayerNormalization")))
