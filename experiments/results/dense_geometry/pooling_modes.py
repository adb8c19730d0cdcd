"""Dense evaluation of a run at test scales Q, with the model's VALID (floor) 2x2
pooling and with Caffe's ceil mode (an odd map's last row and column pooled alone,
as the paper's framework does), beside the centre crop and dense without flips.

    python experiments/results/dense_geometry/pooling_modes.py WORKDIR 32,37,55

Prints one JSON line: top-1 error in % per Q. A one-off analysis (README.md).
"""

import json
import sys

import jax.numpy as jnp

from vgg_jax import evaluate, evaluation, pooling
from vgg_jax.model import VGG


def ceil_mode_pool(x):
  _, h, w, _ = x.shape
  x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
  return pooling.max_pool_2x2(x)


def main(workdir: str, scales: list[int]) -> None:
  config = evaluate.load_run_config(workdir)
  variables, step, _ = evaluate.restore(workdir)
  model = VGG.from_config(config.model, 10, int(config.data.image_size))
  models = {'floor': model, 'ceil': model.clone(pool_fn=ceil_mode_pool)}

  def error(protocol, q, pool='floor', flip=None):
    result, = evaluation.evaluate_protocols(models[pool], variables, config.data,
                                            protocols=[protocol], scales=[q], flip=flip,
                                            batch_size=128)
    return round(100 * result['top1_error'], 2)

  errors = {q: {'single': error('single', q), 'dense': error('dense', q),
                'dense_noflip': error('dense', q, flip=False),
                'dense_ceil_mode': error('dense', q, 'ceil')} for q in scales}
  print(json.dumps({'workdir': workdir, 'step': int(step), 'top1_error_percent': errors}))


if __name__ == '__main__':
  main(sys.argv[1], [int(q) for q in sys.argv[2].split(',')])
