"""Importing this module registers every built-in architecture."""
from . import cnn, mobilenet, resnet, sequence, vit  # noqa: F401
