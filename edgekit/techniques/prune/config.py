"""Configuration of pruning: structured (channels removed) or a sparsity pattern, typos rejected.

``method: structured`` (the default) removes channels; exactly one target picks how many:

- ``ratio``: fraction of the channels removed from every prunable group (0 < ratio < 1);
- ``macs_target``: fraction of the original MACs to **keep** (0.5 = remove half the MACs);
- ``speedup_target``: measured latency speedup over the unpruned model on ``speed_backend``;
- ``per_layer_ratios`` alone: explicit per-layer ratios (e.g. from
  :func:`edgekit.techniques.prune.sensitivity.allocate_ratios`).

``per_layer_ratios`` combined with ``macs_target`` / ``speedup_target`` is scaled by one factor until the target is met.

Transformer encoders (Hugging Face BERT-family / ViT / DistilBERT, zoo ViT) are pruned with ``heads`` (fraction of
attention heads removed per layer), ``ffn`` (fraction of FFN neurons), ``layers`` (indices removed whole) or ``depth``
(layers kept, the least important removed), ranked
by ``head_importance``; ``macs_target`` / ``speedup_target`` with them scales ``heads`` / ``ffn`` (see
docs/PRUNING.md, Transformers).
The other methods are the sparsity patterns of :mod:`edgekit.techniques.sparsity` (``unstructured`` with
``sparsity``, ``2:4``).

Example:
    >>> PruneConfig(macs_target=0.5, importance="l1", round_to=8, finetune={"epochs": 3, "lr": 0.01})
    >>> PruneConfig(method="2:4", exclude={"patterns": ["stem.*"]})
    >>> PruneConfig(heads=0.5, ffn=0.5, head_importance="taylor", finetune={"epochs": 3, "lr": 2e-4})
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Dict, List, Optional

from pydantic import Field, field_validator, model_validator

from edgekit.backends import BACKENDS, default_backend
from edgekit.registry import Registry
from edgekit.techniques.base import OneOf
from edgekit.techniques.recovery import RecoveryConfig
from edgekit.techniques.scope import Scope, scope_field
from edgekit.techniques.sparsity.config import SPARSITY_PATTERNS, SparsityConfig, check_amount


@dataclass(frozen=True)
class Importance:
    """A registered channel-importance criterion (a Torch-Pruning importance, built on demand)."""

    name: str
    make: Callable[[], Any]  # -> a torch_pruning importance object (imports torch_pruning lazily)
    description: str
    needs_gradients: bool = False  # filled from training batches before each pruning step
    search_proxy: Optional[str] = None  # cheaper importance for the candidates of a MACs / speed search


def _magnitude(p: int) -> Callable[[], Any]:
    def make() -> Any:
        import torch_pruning as tp

        return tp.importance.GroupMagnitudeImportance(p=p)

    return make


def _bn_scale() -> Any:
    import torch_pruning as tp

    return tp.importance.BNScaleImportance()


def _taylor() -> Any:
    import torch_pruning as tp

    return tp.importance.GroupTaylorImportance()


IMPORTANCES: Registry[Importance] = Registry("importance")
for _imp in (Importance("l1", _magnitude(1), "L1 norm of each channel group's weights"),
             Importance("l2", _magnitude(2), "L2 norm of each channel group's weights"),
             Importance("bn_scale", _bn_scale, "|gamma| of the BatchNorm after each channel", search_proxy="l1"),
             Importance("taylor", _taylor, "first-order Taylor estimate of the loss change (needs labelled data)",
                        needs_gradients=True, search_proxy="l1")):
    IMPORTANCES.register(_imp.name)(_imp)


@dataclass(frozen=True)
class HeadImportance:
    """A registered importance of attention heads and FFN neurons (computed by
    :mod:`edgekit.techniques.prune._transformer` from a calibration pass)."""

    name: str
    description: str
    needs_labels: bool = False


HEAD_IMPORTANCES: Registry[HeadImportance] = Registry("head importance")
for _himp in (HeadImportance("l1", "mean |output| of each head (its slice of the attention context) and of each FFN "
                                   "neuron over the calibration batches (no labels needed)"),
              HeadImportance("l2", "Minitron-style activation importance: mean L2 norm of each head's output per "
                                   "token and mean |activation| of each FFN neuron over the calibration batches"),
              HeadImportance("taylor", "|d loss / d mask| of a per-head / per-neuron mask (Michel et al. 2019) over "
                                       "labelled training batches", needs_labels=True)):
    HEAD_IMPORTANCES.register(_himp.name)(_himp)


AVX512_ALIGNMENT = 16  # NCHWc block of ORT / oneDNN fp32 convs on AVX-512: 24 or 40 channels cost as much as 32 or 48


def default_round_to(backend: str) -> tuple:
    """``(round_to, why)``: the backend's declared channel alignment, raised to 16 for a CPU backend on an
    AVX-512 machine (measured: −50 % MACs gave 1.85× at batch 8 with round_to 16, 1.34× with 8; docs/PRUNING.md).

    Example:
        >>> default_round_to("ort-cpu")
        (16, 'ort-cpu channel alignment 8, raised to 16 on this AVX-512 CPU')
    """
    from edgekit.backends import backend_spec
    from edgekit.core.platform import environment

    _load_backends()
    spec = backend_spec(backend)
    align = spec.channel_alignment
    if spec.device == "cpu" and "avx512f" in environment()["isa_flags"] and align < AVX512_ALIGNMENT:
        return AVX512_ALIGNMENT, f"{backend} channel alignment {align}, raised to 16 on this AVX-512 CPU"
    return align, f"{backend} channel alignment {align}"


def _load_backends() -> None:
    from edgekit.backends import _builtin  # noqa: F401  (fills the registry)


class PruneConfig(RecoveryConfig):
    """Pruning settings for :func:`edgekit.techniques.prune.prune.prune`."""

    renamed = {**RecoveryConfig.renamed, "protect": "exclude"}

    method: Annotated[str, OneOf(SPARSITY_PATTERNS, extra=("structured",), kind="prune method")] = Field(
        "structured", description="structured (channels removed: smaller and faster) or a sparsity pattern: "
                                  "unstructured (zeros; smaller compressed file, same dense speed), 2:4 (TensorRT "
                                  "sparse tensor cores)")
    ratio: Optional[float] = Field(None, gt=0, lt=1, description="channel fraction removed from every prunable group")
    macs_target: Optional[float] = Field(None, gt=0, lt=1, description="fraction of the original MACs to keep "
                                         "(0.5 = remove half); the channel ratio is searched to meet it")
    speedup_target: Optional[float] = Field(None, gt=1, description="measured latency speedup over the unpruned "
                                            "model on speed_backend; the ratio is searched by exporting and timing "
                                            "candidates")
    sparsity: Optional[float] = Field(None, gt=0, lt=1, description="fraction of weights zeroed (method unstructured)")
    speed_backend: Annotated[str, OneOf(BACKENDS, _load_backends)] = Field(
        default_factory=lambda: default_backend("onnx", "cpu"),
        description="backend timing speedup_target candidates (see `edgekit doctor`)")
    speed_batch: int = Field(1, gt=0, description="batch size timed for speedup_target")
    speed_threads: Optional[int] = Field(2, gt=0, description="intra-op threads when timing speedup_target")
    speed_rounds: int = Field(5, ge=2, description="interleaved timing rounds per speed candidate")
    importance: Annotated[str, OneOf(IMPORTANCES)] = Field("l1", description="channel importance criterion")
    round_to: Optional[int] = Field(None, ge=1, description="every pruned layer's width is a multiple of this; "
                                    "default: speed_backend's channel alignment, at least 16 on AVX-512 CPUs (ORT and "
                                    "OpenVINO compute convs in 16-channel blocks there)")
    exclude: Scope = scope_field("layers left untouched (neither input nor output channels pruned; left dense by "
                                 "sparsity); the classifier's outputs are always kept")
    steps: int = Field(1, ge=1, le=20, description="iterative schedule: prune in this many steps, fine-tuning "
                                                    "after each")
    global_pruning: bool = Field(False, description="rank channels across groups (non-uniform) instead of per group")
    per_layer_ratios: Dict[str, float] = Field(default_factory=dict, description="per-layer channel ratios "
                                               "{module name: ratio}, e.g. from sensitivity analysis")
    max_ratio: float = Field(0.9, gt=0, lt=1, description="no group loses more than this fraction of its channels")
    compare_scratch: bool = Field(False, description="also train the pruned architecture from freshly initialised "
                                  "weights with the same fine-tune budget (no teacher) and report both accuracies: "
                                  "does pruning + KD beat training the small model alone?")
    taylor_batches: int = Field(4, ge=1, description="training batches whose gradients feed taylor importance "
                                "(and the calibration batches of head_importance)")
    heads: Optional[float] = Field(None, gt=0, lt=1, description="transformers: fraction of the attention heads "
                                   "removed from every layer (rounded to whole heads; at least one head stays)")
    ffn: Optional[float] = Field(None, gt=0, lt=1, description="transformers: fraction of the FFN intermediate "
                                 "neurons removed from every layer (kept width a multiple of round_to)")
    layers: List[int] = Field(default_factory=list, description="transformers: encoder layers (0-based indices) "
                              "removed whole")
    depth: Optional[int] = Field(None, ge=1, description="transformers: encoder layers kept; the layers whose "
                                 "removal changes the model's calibration outputs least (KL) are removed")
    head_importance: Annotated[str, OneOf(HEAD_IMPORTANCES)] = Field(
        "l1", description="transformers: how heads and FFN neurons are ranked: l1 (mean |output| over calibration "
                          "batches), l2 (Minitron: mean per-token L2 norm of each head's output) or taylor "
                          "(head-mask gradients, needs labels; next-token loss for causal LMs)")

    @field_validator("per_layer_ratios")
    @classmethod
    def _check_per_layer(cls, v: Dict[str, float]) -> Dict[str, float]:
        bad = {k: r for k, r in v.items() if not (0 <= r < 1)}
        if bad:
            raise ValueError(f"per_layer_ratios must lie in [0, 1); got {bad}")
        return v

    @model_validator(mode="after")
    def _one_target(self) -> PruneConfig:
        if self.method != "structured":
            given = [k for k in ("ratio", "macs_target", "speedup_target", "per_layer_ratios", "heads", "ffn",
                                 "layers", "depth") if getattr(self, k)]
            if given:
                raise ValueError(f"{', '.join(given)} apply to method 'structured', not '{self.method}'")
            check_amount(self.method, self.sparsity)
            return self
        if self.sparsity is not None:
            raise ValueError("sparsity applies to method 'unstructured'; structured pruning takes ratio, "
                             "macs_target, speedup_target or per_layer_ratios")
        if self.transformer:
            return self._transformer_target()
        given = [k for k in ("ratio", "macs_target", "speedup_target") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one pruning target, not {' and '.join(given)}")
        if not given and not self.per_layer_ratios:
            raise ValueError("give a pruning target: ratio (channels removed), macs_target (fraction of MACs kept), "
                             "speedup_target (measured) or per_layer_ratios")
        if self.compare_scratch and self.finetune.epochs == 0:
            raise ValueError("compare_scratch trains the pruned architecture with the fine-tune budget; set "
                             "finetune.epochs > 0")
        if self.global_pruning and self.per_layer_ratios:
            raise ValueError("global_pruning ranks channels across layers itself; drop per_layer_ratios or "
                             "global_pruning")
        return self

    def _transformer_target(self) -> PruneConfig:
        clash = [k for k in ("ratio", "per_layer_ratios", "global_pruning") if getattr(self, k)]
        if clash:
            raise ValueError(f"heads / ffn / layers prune a transformer's heads, FFN neurons and layers; "
                             f"{', '.join(clash)} apply to channel pruning: give one or the other")
        target = "macs_target" if self.macs_target is not None else "speedup_target" if self.speedup_target else None
        if target and not (self.heads or self.ffn):
            raise ValueError(f"{target} with transformer pruning scales heads / ffn; give heads and/or ffn")
        if self.macs_target is not None and self.speedup_target is not None:
            raise ValueError("give one pruning target, not macs_target and speedup_target")
        if self.steps > 1:
            raise ValueError("steps applies to channel pruning; transformer heads / ffn are pruned in one step")
        if self.depth is not None and self.layers:
            raise ValueError("give layers (which to remove) or depth (how many to keep), not both")
        if len(set(self.layers)) != len(self.layers) or any(i < 0 for i in self.layers):
            raise ValueError(f"layers must be distinct layer indices >= 0, got {self.layers}")
        if self.compare_scratch and self.finetune.epochs == 0:
            raise ValueError("compare_scratch trains the pruned architecture with the fine-tune budget; set "
                             "finetune.epochs > 0")
        return self

    @property
    def transformer(self) -> bool:
        """True when heads, FFN neurons or whole layers of a transformer are pruned."""
        return bool(self.heads or self.ffn or self.layers or self.depth)

    def resolved(self) -> PruneConfig:
        """This config with ``round_to`` filled in (see :func:`default_round_to`) when it was left unset."""
        if self.round_to is not None:
            return self
        return self.model_copy(update={"round_to": default_round_to(self.speed_backend)[0]})

    @property
    def target_kind(self) -> str:
        """'ratio', 'macs', 'speed' or 'per_layer' (structured), else the sparsity pattern."""
        if self.method != "structured":
            return self.method
        if self.transformer and self.macs_target is None and self.speedup_target is None:
            return "transformer"
        if self.macs_target is not None:
            return "macs"
        if self.speedup_target is not None:
            return "speed"
        return "ratio" if self.ratio is not None else "per_layer"

    def sparsity_config(self) -> SparsityConfig:
        """The :class:`SparsityConfig` for a sparsity ``method``."""
        return SparsityConfig(method=self.method, sparsity=self.sparsity, exclude=self.exclude,
                              finetune=self.finetune, alpha=self.alpha, temperature=self.temperature)
