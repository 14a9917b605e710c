"""INT8 configuration: targets (which QDQ flavour) and calibration methods, one registry each.

A *target* decides the quantisation scheme, because the fast int8 path differs per runtime
(DESIGN §3): ONNX Runtime on x86 wants uint8 asymmetric activations with int8 per-channel
symmetric weights (U8S8); TensorRT wants symmetric int8 activations and weights (zero point 0)
in explicit Q/DQ at the inputs of Conv/Gemm/MatMul and at residual adds.

Example:
    >>> TARGETS.get("cpu").activations
    'uint8'
    >>> QuantizeConfig(target="tensorrt", method="percentile", percentile=99.9)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Literal, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field

from edgekit.errors import validated_config
from edgekit.registry import Registry


@dataclass(frozen=True)
class QuantScheme:
    """How a target wants tensors quantised (what the artifact's sidecar records as ``quant_scheme``)."""

    target: str
    activations: str  # "uint8" | "int8"
    activation_symmetric: bool
    weights: str  # "int8"
    weight_symmetric: bool
    per_channel: bool
    op_types: Optional[Tuple[str, ...]]  # ops to quantise (None = everything ORT can quantise)
    keep_activations: bool  # keep Relu/Clip explicit between Conv and Q (TensorRT fuses them itself)
    description: str = ""

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["op_types"] = list(self.op_types) if self.op_types else "all"
        return d

    def ort_arguments(self) -> Dict[str, Any]:
        """Keyword arguments for ``onnxruntime.quantization.quantize_static`` implementing this scheme."""
        from onnxruntime.quantization import QuantType

        qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        extra = {
            "ActivationSymmetric": self.activation_symmetric,
            "WeightSymmetric": self.weight_symmetric,
            "QDQKeepRemovableActivations": self.keep_activations,
        }
        args: Dict[str, Any] = {"activation_type": qtype[self.activations], "weight_type": qtype[self.weights],
                                "per_channel": self.per_channel, "extra_options": extra}
        if self.op_types:
            args["op_types_to_quantize"] = list(self.op_types)
        return args


TARGETS: Registry[QuantScheme] = Registry("quantisation target")
TARGETS.register("cpu")(QuantScheme(
    "cpu", "uint8", False, "int8", True, True, None, False,
    "ONNX Runtime x86: uint8 asymmetric activations, int8 symmetric per-channel weights (U8S8, VNNI kernels)"))
TARGETS.register("tensorrt")(QuantScheme(
    "tensorrt", "int8", True, "int8", True, True, ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add"), True,
    "TensorRT explicit quantisation: symmetric int8 activations and weights (zero point 0), Q/DQ on the inputs "
    "of Conv/Gemm/MatMul and on residual Adds, activations kept for TensorRT's own fusion"))


@dataclass(frozen=True)
class CalibrationMethod:
    """A registered calibration method: its ORT enum name and the ORT extra options it needs."""

    name: str
    ort_name: str  # attribute of onnxruntime.quantization.CalibrationMethod
    description: str

    def ort_arguments(self, percentile: float) -> Dict[str, Any]:
        from onnxruntime.quantization import CalibrationMethod as OrtMethod

        extra = {"CalibPercentile": float(percentile)} if self.name == "percentile" else {}
        return {"calibrate_method": getattr(OrtMethod, self.ort_name), "extra_options": extra}


CALIBRATION_METHODS: Registry[CalibrationMethod] = Registry("calibration method")
for _m in (CalibrationMethod("minmax", "MinMax", "range = observed min/max of each tensor"),
           CalibrationMethod("entropy", "Entropy", "range minimising KL divergence of the histogram (TensorRT style)"),
           CalibrationMethod("percentile", "Percentile", "range = the given percentile of |values| (clips outliers)")):
    CALIBRATION_METHODS.register(_m.name)(_m)


class QuantizeConfig(BaseModel):
    """Static post-training quantisation settings (what :func:`edgekit.techniques.quantize.ptq.quantize` takes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal["cpu", "tensorrt"] = Field("cpu", description="cpu (ORT x86, U8S8) | tensorrt (symmetric S8S8)")
    method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="calibration method")
    percentile: float = Field(99.99, gt=0, le=100, description="percentile for method 'percentile'")
    samples: int = Field(128, gt=0, description="calibration samples used (first N of the calibration set)")
    batch_size: int = Field(16, gt=0, description="samples per calibration batch")
    per_channel: bool = Field(True, description="per-output-channel weight scales")
    exclude_nodes: Tuple[str, ...] = Field((), description="ONNX node names to keep in float")
    max_accuracy_drop: Optional[float] = Field(
        None, ge=0, description="budget in accuracy points on the validation split (None = no check)")
    max_fallback_layers: int = Field(8, ge=0, description="most layers the accuracy budget may fall back to float")
    sensitivity_samples: int = Field(256, gt=0, description="validation samples used to rank layer sensitivity")
    threads: Optional[int] = Field(2, gt=0, description="ORT threads for evaluation and latency during fallback")


class DynamicQuantizeConfig(BaseModel):
    """Dynamic quantisation settings (int8 weights, activations quantised at run time; CPU only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_channel: bool = Field(False, description="per-channel weight scales")
    op_types: Tuple[str, ...] = Field(("LSTM", "GRU", "MatMul", "Gemm", "Attention"),
                                      description="op types to quantise")
    exclude_nodes: Tuple[str, ...] = Field((), description="ONNX node names to keep in float")


def make_config(cls, **kwargs: Any):
    """Build a pydantic config, turning validation errors into ConfigError naming field and allowed values.

    Example:
        >>> make_config(QuantizeConfig, target="tpu")
        Traceback (most recent call last):
        edgekit.errors.ConfigError: target: unknown quantisation target 'tpu'; valid: cpu, tensorrt
    """
    if "target" in kwargs and kwargs["target"] not in TARGETS:
        TARGETS.get(str(kwargs["target"]))  # raises ConfigError with the valid names
    if "method" in kwargs and kwargs["method"] not in CALIBRATION_METHODS:
        CALIBRATION_METHODS.get(str(kwargs["method"]))
    return validated_config(cls, kwargs, cls.__name__)
