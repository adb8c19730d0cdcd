"""Local response normalisation (Table 3, rows A and A-LRN).

    python -m experiments.sweep --sweep=configs/sweeps/lrn.py:runlocal --workdir=DIR

A-LRN is A with AlexNet's LRN after the first conv. The paper: no gain (29.6 against 29.7
% top-1, dense evaluation at Q = S), so B-E drop it. Here batch norm follows every conv in
both nets (configs/cifar10.py), as it does in every sweep. Base: configs/cifar10.py with
the same argument; sweep option `seeds=N` (default 3).

Measured (experiments/results/pilot_1epoch/, CIFAR-10, `runlocal,epochs=1`, 2-core CPU; A-LRN's 3
points took 7 min, A came from the depth sweep): centre-crop top-1 error A 45.0 ± 2.0, A-LRN
45.4 ± 0.6 %.
"""

import os

from vgg_jax import config_schema

# The base config, loaded by path beside this file (configs are not installed).
cifar10 = config_schema.load_config_module(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'cifar10.py'))

VARIANTS = ('A', 'A-LRN')


def get_config(arg=None):
  return cifar10.get_config(config_schema.split_arg(arg, seeds=3)[1])


def get_sweep(arg=None):
  options, _ = config_schema.split_arg(arg, seeds=3)
  return [{'model.variant': v, 'seed': s} for v in VARIANTS for s in range(options.seeds)]
