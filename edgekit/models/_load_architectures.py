"""Importing this module registers every built-in architecture."""
from edgekit.models import cnn, hf, mobilenet, resnet, sequence, vit  # noqa: F401
