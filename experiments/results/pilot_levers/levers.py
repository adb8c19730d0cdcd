"""One-off (2026-12-07): a size of configs/cifar10.py trained with config fields
overridden, for a quick screen of recipe levers; its result on stdout.

    PYTHONPATH=. python experiments/results/pilot_levers/levers.py \
        'D,twocore,folder=ROOT' WORKDIR optimizer.weight_decay=1e-3 seed=1

The same as `python -m vgg_jax.train --config=configs/cifar10.py:D,twocore,folder=ROOT
--workdir=WORKDIR --config.optimizer.weight_decay=1e-3 --config.seed=1`, from Python.
"""
import ast
import sys
import time

from configs import cifar10
from experiments import sweep
from vgg_jax import console, train


def main(size, workdir, *overrides):
  config = cifar10.get_config(size)
  for override in overrides:
    key, value = override.split('=', 1)
    sweep.set_field(config, key, ast.literal_eval(value))  # a misspelt field is an error
  console.quiet_libraries()
  start = time.time()
  result = train.train_and_evaluate(config, workdir)
  print(size, *overrides, 'top-1 error', result['top1_error'], 'wall',
        round(time.time() - start), 's')


if __name__ == '__main__':
  main(*sys.argv[1:])
