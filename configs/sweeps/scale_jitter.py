"""Training scale (Tables 3-4): D at fixed S = 37, fixed S = 55, jittered S in [37, 73].

    python -m experiments.sweep --sweep=configs/sweeps/scale_jitter.py:runlocal --workdir=DIR

The paper's S = 256, 384 and [256, 512] at its 224 crop, scaled to the 32
crop (configs/cifar10.py). The paper: jittered training beats either fixed
scale, at a single test scale (D: 27.0, 26.8, 25.6 % top-1, dense evaluation) and more with
multi-scale testing (26.6, 26.5, 24.8). Besides the base config's evaluations
(centre crop and dense at Q, dense at the `auto` scales), every model is tested with
multi-crop and dense + multi-crop at the `auto` scales (Table 5; 150 views per image,
the costliest evaluation: its time is in each result), and at each of TEST_SCALES alone,
for the plot of error against Q. All three start from
random weights with the same budget; the paper fine-tuned S = 384 from
S = 256 and the jittered model from S = 384 (add 'init_from': '@<point>' to
the points for that). Base: configs/cifar10.py with the same argument; sweep
option `seeds=N` (default 3).

Measured (experiments/results/pilot_1epoch/, CIFAR-10, `runlocal,epochs=1`, 2-core CPU, 28 min):
dense multi-scale top-1 error S = 37 54.6 ± 2.2, S = 55 70.6 ± 2.2, jittered 69.3 ± 3.7 %;
the jittered net's error varies least across test scales (67.8-71.4 % at Q = 32..73).
"""

import os

from vgg_jax import config_schema

# The base config, loaded by path beside this file (configs are not installed).
cifar10 = config_schema.load_config_module(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'cifar10.py'))

TEST_SCALES = (32, 37, 46, 55, 64, 73)
SCALES = (
    {},  # the base: fixed S = 37, Q = 37
    {'data.train_scale': (55, 55), 'data.test_scale': 55},
    {'data.train_scale': cifar10.JITTER_RANGE, 'data.test_scale': cifar10.JITTER_TEST_SCALE},
)


# Table 5's protocols on the same models, at the multi-scale test scales.
MULTICROP = ('multicrop:auto', 'dense+multicrop:auto')


def get_config(arg=None):
  config = cifar10.get_config(config_schema.split_arg(arg, seeds=3)[1])
  evals = (*config.evals, *MULTICROP, *(f'single:{q}' for q in TEST_SCALES))
  config.evals = tuple(dict.fromkeys(evals))  # the full size has multi-crop already
  return config


def get_sweep(arg=None):
  options, _ = config_schema.split_arg(arg, seeds=3)
  return [{'model.variant': 'D', **scale, 'seed': seed}
          for scale in SCALES for seed in range(options.seeds)]
