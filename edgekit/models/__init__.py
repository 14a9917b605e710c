"""Reference architectures behind one registry, and self-describing checkpoints."""
from edgekit.models.checkpoint import apply_structure, capture_structure, load_checkpoint, load_weights, save_checkpoint
from edgekit.models.registry import MODELS, count_params, create_model, describe_models, model_names, register_model

__all__ = ["MODELS", "apply_structure", "capture_structure", "count_params", "create_model", "describe_models",
           "load_checkpoint", "load_weights", "model_names", "register_model", "save_checkpoint"]
