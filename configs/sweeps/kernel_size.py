"""Kernel size (§4.1): B against the shallow net with one 5x5 conv per stage.

    python -m experiments.sweep --sweep=configs/sweeps/kernel_size.py:runlocal --workdir=DIR

The paper replaces each pair of B's 3x3 convs by one 5x5 conv (the same
receptive field, fewer non-linearities): 7 % higher top-1 error than B
(centre crop). A third point, one 3x3 conv per stage, separates what the
5x5 net loses by depth from what it gains by its larger kernel. Base:
configs/cifar10.py with the same argument; sweep option `seeds=N` (default 3).

Measured (experiments/results/pilot_1epoch/, CIFAR-10, `runlocal,epochs=1`, 2-core CPU, 24 min for the
9 points): centre-crop top-1 error B 46.3 ± 1.7, one 5x5 per stage 45.0 ± 0.4, one 3x3 per
stage 42.7 ± 0.7 %.
"""

import os

from vgg_jax import config_schema

# The base config, loaded by path beside this file (configs are not installed).
cifar10 = config_schema.load_config_module(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'cifar10.py'))

SHALLOW = (1, 1, 1, 1, 1)
ARCHITECTURES = (
    {'model.variant': 'B'},                                                   # 2 x 3x3
    {'model.variant': 'B', 'model.depths': SHALLOW, 'model.kernel_size': 5},  # 1 x 5x5
    {'model.variant': 'B', 'model.depths': SHALLOW},                          # 1 x 3x3
)


def get_config(arg=None):
  return cifar10.get_config(config_schema.split_arg(arg, seeds=3)[1])


def get_sweep(arg=None):
  options, _ = config_schema.split_arg(arg, seeds=3)
  return [{**arch, 'seed': seed} for arch in ARCHITECTURES for seed in range(options.seeds)]
