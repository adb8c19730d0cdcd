"""Per-layer oneDNN execution times of VGG-D at width 1 (batch 64, 32x32): vgg_jax's
training step, the same convolutions alone, and PyTorch's step (channels-last), from
`ONEDNN_VERBOSE=1` logs; writes layers.json beside this file. Each convolution pass is
keyed by oneDNN's problem descriptor; a key's time is the median of its calls after the
first third (warm-up). PyTorch's log holds both of its layouts: only channels-last
(`acdb`) calls are kept. The logs, 2026-12-06 night, 2-core AMD EPYC (model 17, AVX-512),
at 71e6cd9 (experiments/PERFORMANCE.md, 2026-12-06 night):

    vgg_jax_step.log.gz   python -m vgg_jax.benchmark --image_size=32 --num_classes=10 \
                            --variant=D --width=1 --fc_width=512 --batch_size=64 --steps=2 \
                            --windows=3 --measure=train          (ONEDNN_VERBOSE=1)
    vgg_jax_alone.log.gz  alone.py, as its docstring runs it, 16 minutes after the step
    vgg_jax_alone_earlier.log.gz  the same convolutions a minute after the step (an
                          earlier copy of alone.py that drew its inputs with np.random.rand)
    torch_step.log.gz     python -m experiments.torch_reference --variant=D --width=1 \
                            --fc_width=512 --batch_size=64 --steps=2 --windows=3
                          (ONEDNN_VERBOSE=1 and vgg_jax's GLIBC_TUNABLES)
"""

import collections
import gzip
import json
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))


def pass_times(name: str) -> dict:
  calls = collections.defaultdict(list)
  with gzip.open(os.path.join(HERE, name), 'rt') as f:
    for line in f:
      if not line.startswith('onednn_verbose') or ',exec,' not in line:
        continue
      fields = line.strip().split(',')
      if fields[1] == 'v1':  # oneDNN 3.12's lines name their kind first
        fields = fields[:1] + fields[3:]
      primitive, prop_kind, descriptors = fields[3], fields[5], fields[6]
      if primitive != 'convolution' or 'aBcd16b' in descriptors or ':abcd:' in descriptors:
        continue  # PyTorch's contiguous layout
      calls[f'{prop_kind} {fields[-2]}'].append(float(fields[-1]))
  return {key: statistics.median(ms[len(ms) // 3:]) for key, ms in sorted(calls.items())}


def main():
  logs = {'vgg_jax_step': 'vgg_jax_step.log.gz',
          'vgg_jax_alone_earlier': 'vgg_jax_alone_earlier.log.gz',
          'vgg_jax_alone': 'vgg_jax_alone.log.gz', 'torch_step': 'torch_step.log.gz'}
  times = {who: pass_times(name) for who, name in logs.items()}
  keys = sorted(set().union(*times.values()))
  table = {key: {who: times[who].get(key) for who in logs} for key in keys}
  with open(os.path.join(HERE, 'layers.json'), 'w') as f:
    json.dump(table, f, indent=1)
  for key, row in table.items():
    print(key, {who: ms if ms is None else round(ms, 2) for who, ms in row.items()})


if __name__ == '__main__':
  main()
