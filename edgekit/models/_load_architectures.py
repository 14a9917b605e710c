"""Importing this module registers every built-in architecture."""
from edgekit.models import cnn, concat_se, hf, mobilenet, resnet, sequence, vit  # noqa: F401
