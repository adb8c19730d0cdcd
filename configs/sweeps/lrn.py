"""Local response normalisation (Table 3, rows A and A-LRN).

    python -m experiments.sweep --sweep=configs/sweeps/lrn.py:runlocal --workdir=DIR

A-LRN is A with AlexNet's LRN after the first conv. The paper: no gain (29.6
against 29.7 % top-1, dense evaluation at Q = S), so B-E drop it. Here batch norm follows every conv in
both nets (configs/cifar10.py), as it does in every sweep. Base:
configs/cifar10.py with the same argument; sweep option `seeds=N` (default 3).

Measured (experiments/results/, CIFAR-10, `runlocal,epochs=1`, 2-core CPU; A-LRN's 3
points took 7 min, A came from the depth sweep): centre-crop top-1 error A 45.0 ± 2.0, A-LRN
45.4 ± 0.6 %.
"""

import os
import sys

# Loaded by path, not installed (only vgg_jax is): the checkout root lets `configs` import.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from configs import cifar10, common  # pylint: disable=wrong-import-position

VARIANTS = ('A', 'A-LRN')


def get_config(arg=None):
  return cifar10.get_config(common.split_arg(arg, seeds=3)[1])


def get_sweep(arg=None):
  options, _ = common.split_arg(arg, seeds=3)
  return [{'model.variant': v, 'seed': s} for v in VARIANTS for s in range(options.seeds)]
