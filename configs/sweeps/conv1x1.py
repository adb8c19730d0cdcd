"""1x1 against 3x3 convs (Table 3, rows B, C, D).

    python -m experiments.sweep --sweep=configs/sweeps/conv1x1.py:runlocal --workdir=DIR

C adds a 1x1 conv to the end of stages 3-5 of B (more non-linearity, the same receptive
field); D adds a 3x3 conv there instead. The paper: C beats B, D beats C (28.7, 28.1, 27.0
% top-1 at S = 256, dense evaluation at Q = S): non-linearity helps, spatial context helps
more. Base: configs/cifar10.py with the same argument; sweep option `seeds=N` (default 3).

Measured (experiments/results/pilot_1epoch/, CIFAR-10, `runlocal,epochs=1`, 2-core CPU; C's 3 points
took 9 min, B and D came from the depth sweep): centre-crop top-1 error B 46.3 ± 1.7, C
49.3 ± 1.6, D 53.4 ± 2.2 %.
"""

import os

from vgg_jax import config_schema

# The base config, loaded by path beside this file (configs are not installed).
cifar10 = config_schema.load_config_module(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'cifar10.py'))

VARIANTS = ('B', 'C', 'D')


def get_config(arg=None):
  return cifar10.get_config(config_schema.split_arg(arg, seeds=3)[1])


def get_sweep(arg=None):
  options, _ = config_schema.split_arg(arg, seeds=3)
  return [{'model.variant': v, 'seed': s} for v in VARIANTS for s in range(options.seeds)]
