"""INT8 configuration: targets (which QDQ flavour) and calibration methods, one registry each.

Adding a quantisation target is one registry entry: ``TARGETS.register("arm64")(QuantScheme(...))``; the
recipe schema, static PTQ and QAT read everything they need from the scheme.

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
from typing import Annotated, Any, Dict, Literal, Optional, Tuple

from pydantic import Field, model_validator

from edgekit.registry import Registry
from edgekit.techniques.base import OneOf, TechniqueConfig
from edgekit.techniques.scope import Scope, scope_field


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
    dynamic: bool = False  # its runtime runs dynamically quantised models (int8 weights, run-time activations)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("dynamic")
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
    "ONNX Runtime x86: uint8 asymmetric activations, int8 symmetric per-channel weights (U8S8, VNNI kernels)",
    dynamic=True))
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


class SmoothQuantConfig(TechniqueConfig):
    """SmoothQuant before static INT8 (:mod:`edgekit.techniques.quantize.smoothquant`)."""

    alpha: float = Field(0.5, gt=0, le=1, description="migration strength: s_j = max|X_j|^alpha / max|W_j|^(1-alpha)")


class QuantizeConfig(TechniqueConfig):
    """Post-training quantisation settings (what :func:`edgekit.techniques.quantize.ptq.quantize` takes)."""

    renamed = {"exclude_nodes": "exclude"}

    mode: Optional[Literal["static", "dynamic"]] = Field(
        None, description="static (calibrated QDQ) | dynamic (int8 weights, activations quantised at run time: "
                          "LSTM/GRU/Transformer on the CPU) | null (default): dynamic for a transformer graph on a "
                          "target that runs it (cpu), static otherwise (and whenever smoothquant is set)")
    target: Annotated[str, OneOf(TARGETS)] = Field("cpu", description="quantisation target: the QDQ flavour the "
                                                                      "deploying runtime runs fast")
    method: Annotated[str, OneOf(CALIBRATION_METHODS)] = Field("minmax", description="calibration method (static)")
    percentile: float = Field(99.99, gt=0, le=100, description="percentile for method 'percentile'")
    samples: int = Field(128, gt=0, description="calibration samples used (first N of the calibration set)")
    batch_size: int = Field(16, gt=0, description="samples per calibration batch")
    per_channel: bool = Field(True, description="per-output-channel weight scales")
    op_types: Tuple[str, ...] = Field(("LSTM", "GRU", "MatMul", "Gemm", "Attention"),
                                      description="ONNX op types quantised in mode dynamic (static: the target's)")
    exclude: Scope = scope_field("ONNX nodes kept in float (names, patterns, op types)")
    max_accuracy_drop: Optional[float] = Field(
        None, ge=0, description="budget in accuracy points on the validation split (null = no check)")
    max_fallback_layers: int = Field(8, ge=0, description="most layers the accuracy budget may fall back to float")
    sensitivity_samples: int = Field(256, gt=0, description="validation samples used to rank layer sensitivity")
    transformer_scope: bool = Field(
        True, description="static int8 on a graph with Softmax/LayerNormalization (a transformer): quantise only "
                          "the contractions with constant weights and keep the attention products (activation x "
                          "activation MatMuls) float; quantising every op collapses transformer accuracy")
    smoothquant: Optional[SmoothQuantConfig] = Field(
        None, description="static int8: smooth activation outliers into the weights first (per-channel scales "
                          "folded into the preceding LayerNorm or an explicit Mul), e.g. {alpha: 0.5}; null = off")
    speed_fallback: bool = Field(
        True, description="static int8 for a CPU target: profile fp32 vs int8 kernels on ONNX Runtime, keep the "
                          "layers whose int8 form is slower in float, and ship the fastest of all-int8 and two "
                          "fallback policies (timed paired against fp32) within the accuracy budget")
    speed_batches: Tuple[int, ...] = Field((1, 8, 32), min_length=1,
                                           description="batch sizes the speed fallback measures (each must not be "
                                                       "slower than fp32, or the sidecar flags it)")

    @model_validator(mode="after")
    def _positive_speed_batches(self) -> QuantizeConfig:
        bad = [b for b in self.speed_batches if b < 1]
        if bad:
            raise ValueError(f"speed_batches must be positive batch sizes, got {list(self.speed_batches)}")
        return self

    @model_validator(mode="after")
    def _smoothquant_static(self) -> QuantizeConfig:
        if self.smoothquant is not None and self.mode == "dynamic":
            raise ValueError("smoothquant applies to mode 'static' (dynamic int8 measures activation ranges per "
                             "batch at run time); remove smoothquant or set mode: static")
        return self

    @model_validator(mode="after")
    def _dynamic_target(self) -> QuantizeConfig:
        if self.mode == "dynamic" and not TARGETS.get(self.target).dynamic:
            able = [n for n, t in TARGETS.items() if t.dynamic]
            raise ValueError(f"mode 'dynamic' runs only on targets {', '.join(able)}, not '{self.target}' "
                             "(it needs static, calibrated quantisation)")
        return self
