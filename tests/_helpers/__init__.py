"""Shared test helpers: tiny models (torch and ONNX), trained-model records, stage contexts, CLI runs, recipes.

Import from the module that holds a helper, e.g. ``from _helpers.onnx_models import conv_net_onnx``;
``tests/conftest.py`` holds only fixtures, built on these helpers.
"""
