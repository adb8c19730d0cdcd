"""Depth (Table 3, rows A, B, D, E): 11, 13, 16 and 19 weight layers, 3x3 convs.

    python -m experiments.sweep --sweep=configs/sweeps/depth.py:runlocal --workdir=DIR

The paper: error falls with depth up to 16-19 layers, D ~ E (ImageNet, S = 256: 29.6,
28.7, 27.0, 27.3 % top-1, dense evaluation at Q = S). Base: configs/cifar10.py with the
same argument (`runlocal`, `folder=...`, `epochs=...`); sweep options: `seeds=N` (default
3) and `warm`, which starts B, D and E from the trained A of the same seed as §3.1 does
(A's conv1_1, conv2_1, conv3_1, conv3_2 and FC layers); by default every net starts from
Glorot-initialised weights, which the paper notes works as well and keeps the budgets
equal.

Measured (experiments/results/pilot_1epoch/, CIFAR-10, `runlocal,epochs=1`, 2-core CPU, 62 min for the
12 points): centre-crop top-1 error A 45.0 ± 2.0, B 46.3 ± 1.7, D 53.4 ± 2.2, E 59.9 ± 2.4
%; after one epoch depth hurts.
"""

import os

from vgg_jax import config_schema

# The base config, loaded by path beside this file (configs are not installed).
cifar10 = config_schema.load_config_module(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'cifar10.py'))

VARIANTS = ('A', 'B', 'D', 'E')


def get_config(arg=None):
  return cifar10.get_config(config_schema.split_arg(arg, seeds=3, warm=False)[1])


def get_sweep(arg=None):
  options, _ = config_schema.split_arg(arg, seeds=3, warm=False)
  points = []
  for variant in VARIANTS:
    for seed in range(options.seeds):
      point = {'model.variant': variant, 'seed': seed}
      if options.warm and variant != 'A':
        point['init_from'] = f'@variant=A,seed={seed}'
      points.append(point)
  return points
