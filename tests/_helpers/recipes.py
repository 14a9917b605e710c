"""Tiny recipe texts shared by pipeline and CLI tests."""

TINY = """\
description: tiny test recipe
seed: 0
threads: 2
model:
  name: resnet_cifar
  kwargs: {depth: 8, width: 0.5}
data:
  name: digits
  image_size: 8
  channels: 1
stages:
  - type: train
    epochs: 2
    lr: 0.1
targets:
  - backend: torch
  - backend: ort-cpu
  - backend: tensorrt
benchmark:
  batches: [1, 4]
  warmup: 2
  iters: 5
  rounds: 2
report:
  plots: false
"""
