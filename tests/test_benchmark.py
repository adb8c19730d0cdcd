"""The benchmark measures the right things; speed itself is never asserted here."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from experiments import profile_summary
from vgg_jax import benchmark, machine, parallel, summary
from vgg_jax.data import resample
from vgg_jax.model import VGG
from vgg_jax.summary import abstract_variables, count_params

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train import command_env  # pylint: disable=wrong-import-position

TINY = dict(width=1 / 16, fc_width=16, num_classes=5, image_size=32)


@pytest.mark.parametrize('kwargs', [
    dict(variant='A'),
    dict(variant='A-LRN'),
    dict(variant='C', batch_norm=True),
    dict(variant='D', head='gap'),
    dict(variant='B', kernel_size=5, image_size=64),
])
def test_torch_counterpart_has_the_same_parameters(kwargs):
  import torch  # pylint: disable=import-outside-toplevel  # here, not at collection: seconds per worker
  model = VGG(**{**TINY, **kwargs})
  net = benchmark.torch_model(model)
  torch_params = sum(p.numel() for p in net.parameters())
  assert torch_params == count_params(abstract_variables(model)['params'])
  out = net(torch.zeros(2, 3, model.image_size, model.image_size))
  assert tuple(out.shape) == (2, 5)


def run_benchmark(*args):
  return subprocess.run([sys.executable, '-m', 'vgg_jax.benchmark', *args],
                        capture_output=True, text=True, env=command_env(devices=2), timeout=600)


def image_folder(root, side=40, per_split=16):
  """ROOT/{train,test}/<class>/*.png: a dataset the end-to-end run reads from disk."""
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for i in range(per_split):
      folder = root / split / f'c{i % 2}'
      folder.mkdir(parents=True, exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (side, side, 3), np.uint8)).save(folder / f'{i}.png')
  return root


@pytest.mark.slow
def test_benchmark_prints_every_measurement_as_json(tmp_path):
  out = tmp_path / 'bench.json'
  folder = image_folder(tmp_path / 'images')
  proc = run_benchmark('--width=0.0625', '--fc_width=16', '--batch_size=8', '--steps=1',
                       '--windows=1', '--devices=2', '--pipeline_images=4', '--peak_size=256',
                       '--measure=train,peak,eval,pipeline,end_to_end', f'--data_folder={folder}',
                       '--pipeline_workers=1', f'--profile_dir={tmp_path / "profile"}',
                       '--end_to_end_epoch=2',
                       '--compare=torch', f'--output={out}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(out.read_text())
  assert report == json.loads(proc.stdout)
  model = VGG(variant='A', width=1 / 16, fc_width=16, num_classes=10, image_size=32)
  macs = sum(row[3] for row in summary.layer_table(model))
  train = report['train']
  assert train['model_flops_per_step'] == 3 * 2 * macs * 8
  # XLA counts what it compiled: the same convolutions and matmuls, give or
  # take the first layer's unneeded input gradient and the elementwise work;
  # oneDNN's convolutions (wherever they are built) it does not count.
  xla_share = train['xla_flops_per_step'] / train['model_flops_per_step']
  if report['machine']['convolutions'] == 'onednn':
    assert xla_share < 0.2
    assert report['machine']['onednn_kernels'].count(',') == 2  # one per pass
  else:
    assert report['machine']['convolutions'] == 'xla'
    assert 0.5 < xla_share < 1.5
  assert train['mfu'] == pytest.approx(
      train['model_flops_per_sec'] / report['peak']['flops_per_sec'])
  assert report['machine']['devices'] == 2
  # The CPU beside every rate: a rate means little without its instruction sets.
  assert {k: report['machine'][k] for k in ('cpu', 'cpu_model', 'isa')} == {
      k: machine.describe()[k] for k in ('cpu', 'cpu_model', 'isa')}
  # The benchmark's process resamples as this one does (the same build, switch, Pillow).
  assert report['machine']['resampling'] == (
      'compiled' if resample.available() else f'pillow ({resample.unavailable_reason()})')
  for rate in (train, report['eval'], report['pipeline']['one_thread'], report['torch'],
               report['end_to_end'], report['pipeline']['workers']):
    assert rate['img_per_sec'] > 0
  assert report['pipeline']['workers']['workers'] == 1
  # The trace was written, and its ops sum up: the CPU's convolutions among them.
  ops = profile_summary.summarize(str(tmp_path / 'profile'), top=1000)['devices']['/host:CPU']
  assert ops['summed_line'] == 'xla ops' and ops['total_ms'] > 0
  assert any(op['name'].startswith(('ffi_call', 'convolution')) for op in ops['ops'])
  assert report['end_to_end']['fraction_of_step_alone'] == pytest.approx(
      report['end_to_end']['img_per_sec'] / train['img_per_sec'])
  assert report['end_to_end']['epoch'] == 2
  assert report['end_to_end']['fraction_of_step_alone_paired'] == pytest.approx(
      report['end_to_end']['windows'][0] / train['windows'][0])  # one window each
  torch_rates = report['torch']['rates']
  assert set(torch_rates) == {'contiguous', 'channels_last'}
  assert report['torch']['img_per_sec'] == max(torch_rates.values())  # the better layout
  assert torch_rates[report['torch']['memory_format']] == report['torch']['img_per_sec']
  assert report['torch']['ratio'] == pytest.approx(
      train['img_per_sec'] / report['torch']['img_per_sec'])
  assert report['torch']['ratio_best'] == pytest.approx(
      max(train['windows']) / max(report['torch']['windows']))
  # PyTorch also with this process's malloc tunables, wherever it restarted with them.
  ours = report['machine']['glibc_tunables']
  if ours and ours != report['torch']['glibc_tunables']:
    same = report['torch']['same_malloc']
    assert same['glibc_tunables'] == ours
    assert same['img_per_sec'] == max(same['rates'].values()) > 0
    assert same['ratio'] == pytest.approx(train['img_per_sec'] / same['img_per_sec'])
  else:
    assert 'same_malloc' not in report['torch']


def test_torch_is_compared_in_its_better_memory_format():
  windows = {'contiguous': [10.0, 12.0, 11.0], 'channels_last': [14.0, 13.0, 20.0]}
  rates = {f'torch_{fmt}': {'img_per_sec': sorted(w)[1], 'windows': w}
           for fmt, w in windows.items()}
  summary = benchmark.torch_summary(rates, {'windows': [7.0, 26.0, 13.0]})
  assert summary['memory_format'] == 'channels_last' and summary['img_per_sec'] == 14.0
  assert summary['rates'] == {'contiguous': 11.0, 'channels_last': 14.0}
  assert summary['windows'] == windows['channels_last']
  assert summary['ratio'] == pytest.approx(13 / 14)  # vgg_jax's median over the better one's
  assert summary['ratio_paired'] == pytest.approx(0.65)  # median of 7/14, 26/13, 13/20
  assert summary['ratio_best'] == pytest.approx(26 / 20)


def test_torch_with_the_same_malloc_is_summarised_from_its_own_windows():
  rates = {f'torch_{fmt}{suffix}': {'img_per_sec': rate, 'windows': [rate]}
           for (fmt, suffix), rate in {('contiguous', ''): 10.0, ('channels_last', ''): 12.0,
                                       ('contiguous', '_same_malloc'): 16.0,
                                       ('channels_last', '_same_malloc'): 14.0}.items()}
  train = {'windows': [20.0]}
  assert benchmark.torch_summary(rates, train)['ratio'] == pytest.approx(20 / 12)
  same = benchmark.torch_summary(rates, train, 'same')
  assert same['memory_format'] == 'contiguous' and same['ratio'] == pytest.approx(20 / 16)


@pytest.mark.parametrize('environ, mallocs', [
    ({}, ('users',)),  # no restart: one environment
    ({'GLIBC_TUNABLES': 'a=1:b=2', 'VGG_JAX_USERS_GLIBC_TUNABLES': ''}, ('users', 'same')),
    ({'GLIBC_TUNABLES': 'a=1:b=2', 'VGG_JAX_USERS_GLIBC_TUNABLES': 'a=1'}, ('users', 'same')),
    ({'GLIBC_TUNABLES': 'a=1'}, ('users',)),  # the user's own, unchanged
])
def test_pytorch_gets_a_second_malloc_only_where_ours_differs(monkeypatch, environ, mallocs):
  for name in ('GLIBC_TUNABLES', 'VGG_JAX_USERS_GLIBC_TUNABLES'):
    monkeypatch.delenv(name, raising=False)
  for name, value in environ.items():
    monkeypatch.setenv(name, value)
  assert benchmark.torch_mallocs() == mallocs


def test_side_by_side_ratios():
  ratios = benchmark.side_by_side([10, 20, 30], [20, 10, 60])
  assert ratios['ratio'] == pytest.approx(20 / 20)
  assert ratios['ratio_paired'] == pytest.approx(0.5)  # median of 0.5, 2, 0.5
  assert ratios['ratio_best'] == pytest.approx(30 / 60)


@pytest.mark.parametrize('kernels,muon_dtype', [('sgd', 'float32'), ('muon', 'float32'),
                                                ('muon', 'bfloat16')])
def test_the_timed_step_trains_the_kernels_with_the_optimizer_asked_for(kernels, muon_dtype):
  model = VGG(variant='A', batch_norm=True, **TINY)
  mesh = parallel.make_mesh(jax.devices()[:1])
  batch = benchmark.synthetic_batch(8, model.image_size, model.num_classes, mesh)
  opt_cfg = benchmark.optimizer_config(kernels, muon_dtype=muon_dtype)
  assert opt_cfg.muon_dtype == muon_dtype
  state, _ = benchmark.compiled_train_step(model, mesh, batch, opt_cfg=opt_cfg)
  # Muon's step puts every 4-D kernel (the convs', fc1's) at norm sqrt(out); SGD's
  # leaves Glorot's draws near, not at, it.
  kernels_4d = [k for k in jax.tree.leaves(state.params) if k.ndim == 4]
  on_sphere = [np.isclose(np.linalg.norm(np.asarray(k)), np.sqrt(k.shape[-1]), rtol=1e-5)
               for k in kernels_4d]
  assert len(kernels_4d) == 9  # A's eight convs and fc1
  assert all(on_sphere) if kernels == 'muon' else not any(on_sphere)
  with pytest.raises(ValueError, match="unknown optimizer.kernels 'adam'"):
    benchmark.optimizer_config('adam')
  with pytest.raises(ValueError, match="unknown optimizer.muon_dtype 'float16'"):
    benchmark.optimizer_config('muon', muon_dtype='float16')


@pytest.mark.slow  # starts the command in a subprocess
@pytest.mark.parametrize('args, line', [
    (('--devices=3',), 'vgg_jax.benchmark: error: --devices=3 but only 2 are visible'),
    (('--windows=0',), 'vgg_jax.benchmark: error: --windows=0 must be at least 1'),
    (('--kernels=muon',), 'vgg_jax.benchmark: error: --kernels=muon holds the conv kernels'),
])
def test_bad_arguments_are_one_line_errors(args, line):
  proc = run_benchmark(*args, '--measure=train')
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith(line)
