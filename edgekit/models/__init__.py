"""Reference architectures behind one registry, and self-describing checkpoints."""
from edgekit.models.checkpoint import apply_structure, capture_structure, load_checkpoint, load_weights, save_checkpoint
from edgekit.models.registry import (
    LAYOUTS,
    MODELS,
    Layout,
    count_params,
    create_model,
    describe_models,
    model_layout,
    model_names,
    register_model,
)

__all__ = ["LAYOUTS", "Layout", "MODELS", "apply_structure", "capture_structure", "count_params", "create_model",
           "describe_models",
           "load_checkpoint", "load_weights", "model_layout", "model_names", "register_model", "save_checkpoint"]
