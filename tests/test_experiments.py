"""Experiment configs, warm starts, the sweep runner and the report (issue #7).

One tiny two-point sweep (A, then B warm-started from it) runs through the
real command line; everything else reuses it or needs no training.
"""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
# Imported here, not inside a test: importing submitit reconfigures logging,
# which closes pytest's capture file if a test's capsys is active.
import submitit

from configs import cifar10, default, imagenet
from experiments import point as point_worker
from experiments import budget, claims, continue_sweeps, report, sweep
from vgg_jax import (checkpoints, cli, config_schema, evaluation, faults, machine, parallel,
                     train, warm_start)
from vgg_jax.model import VGG
# The README troubleshooting table's check (tests/ is on the path under pytest).
from test_reliability import assert_in_readme

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train import command_env, tiny_config  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_FILES = ('depth', 'kernel_size', 'conv1x1', 'lrn', 'scale_jitter')
COPIED_FROM_A = ('conv1_1', 'bn1_1', 'conv2_1', 'bn2_1', 'conv3_1', 'bn3_1', 'conv3_2',
                 'bn3_2', 'fc1', 'fc2', 'fc3')
A_POINT, B_POINT = 'variant=A,seed=0', 'variant=B,from=variant=A+seed=0,learning_rate=0.0,seed=0'

TINY_SWEEP = '''
from configs import default

def get_config(arg=None):
  config = default.get_config()
  config.data.data_dir = {data_dir!r}
  config.data.builder_config = 'tiny'
  config.model.width = 1 / 16
  config.model.fc_width = 16
  config.batch_size = 16
  config.num_train_steps = 8
  config.log_every_steps = 4
  config.eval_every_steps = 8
  config.checkpoint_every_steps = 4
  config.keep_checkpoints = 3
  config.evals = ('single', 'single:auto', 'single:48')  # the last is 'single'
  return config

def get_sweep(arg=None):
  # B starts from A and learns nothing (rate 0): its copied layers stay A's.
  return [{{'model.variant': 'A', 'seed': 0}},
          {{'model.variant': 'B', 'seed': 0, 'init_from': '@variant=A,seed=0',
           'optimizer.learning_rate': 0.0}}]
'''


def run_cli(module, *args, timeout=600):
  # One CPU device: the runner does not care how many devices a point uses
  # (test_train and test_parallel cover eight), and eight simulated devices
  # take twice as long to compile and step.
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=command_env(),
                        capture_output=True, text=True, timeout=timeout)


def mtimes(root):
  return {os.path.relpath(os.path.join(r, f), root): os.stat(os.path.join(r, f)).st_mtime_ns
          for r, _, files in os.walk(root) for f in files}


# --------------------------------------------------------------------------
# Configs.
# --------------------------------------------------------------------------


def test_imagenet_configs_set_the_paper_protocol():
  d384 = imagenet.get_config('D,S=384')
  assert d384.model.variant == 'D' and d384.model.dropout_rate == 0.5
  assert d384.model.weight_init == 'paper' and not d384.model.batch_norm
  assert d384.model.fc_width == 4096 and d384.model.width == 1.0
  assert tuple(d384.data.train_scale) == (384, 384) and d384.data.test_scale == 384
  assert d384.data.image_size == 224 and d384.data.eval_split == 'validation'
  assert d384.batch_size == 256 and d384.num_epochs == 74
  assert d384.optimizer.momentum == 0.9 and d384.optimizer.weight_decay == 5e-4
  assert d384.optimizer.schedule == 'plateau' and d384.optimizer.plateau_factor == 0.1
  assert d384.optimizer.plateau_max_reductions == 3
  assert d384.optimizer.learning_rate == 1e-3  # §3.1: S = 384 starts from S = 256 at 1e-3
  assert 'dense:auto' in d384.evals and d384.init_from == ''
  assert d384.model.dtype == 'bfloat16' and not d384.deterministic  # a GPU config

  e_jitter = imagenet.get_config('E,jitter')
  assert e_jitter.model.variant == 'E'
  assert tuple(e_jitter.data.train_scale) == (256, 512) and e_jitter.data.test_scale == 384
  d = imagenet.get_config('D')
  assert tuple(d.data.train_scale) == (256, 256) and d.optimizer.learning_rate == 1e-2
  assert imagenet.get_config('A-LRN').model.variant == 'A-LRN'
  for bad, message in [('D,S=384,jitter', 'exclude each other'), ('D,Q=3', 'unknown config'),
                       ('D,E', 'not KEY=VALUE'), ('D,S=big', 'must be of type int')]:
    with pytest.raises(ValueError, match=message):
      imagenet.get_config(bad)


@pytest.mark.parametrize('arg', ['D,S=384', 'E,jitter', 'C,S=384'])
def test_fine_tune_configs_refuse_to_start_without_init_from(arg, tmp_path):
  config = imagenet.get_config(arg)
  assert config.requires_init_from
  with pytest.raises(ValueError, match=r'--config\.init_from=WORKDIR.*scratch') as raised:
    train.validate(config)
  assert_in_readme(cli.error_line('vgg_jax.train', raised.value))
  with config.unlocked():
    config.init_from = str(tmp_path)
  train.validate(config)  # a run to start from: accepted
  scratch = imagenet.get_config(arg + ',scratch')  # said on purpose: accepted
  assert not scratch.requires_init_from and scratch.optimizer.learning_rate == 1e-3
  train.validate(scratch)
  assert not imagenet.get_config('D').requires_init_from  # S = 256 trains from scratch


def test_every_config_has_the_same_fields():
  def fields(config, prefix=''):
    return {name for key, value in config.items()
            for name in (fields(value, f'{prefix}{key}.') if hasattr(value, 'items')
                         else [prefix + key])}

  schema = fields(config_schema.base_config())
  assert {'profile', 'prefetch_to_device', 'init_from', 'evals', 'model.dtype'} <= schema
  for config in (default.get_config(), imagenet.get_config('E,jitter'),
                 cifar10.get_config('A,runlocal'), cifar10.get_config('D')):
    assert fields(config) == schema


def test_cifar10_config_scales_and_runlocal():
  # Building a config only names the data: nothing is downloaded or read here.
  tfds_config = cifar10.get_config('D')
  assert tfds_config.data.name == 'cifar10' and tfds_config.data.folder is None
  assert tfds_config.data.train_split == 'train' and tfds_config.data.eval_split == 'test'
  config = cifar10.get_config('E,jitter,folder=/data/cifar')
  assert config.model.variant == 'E' and config.data.folder == '/data/cifar'
  assert config.data.name == 'image_folder' and config.data.image_size == 32
  assert config.data.eval_split == 'test'
  assert tuple(config.data.train_scale) == (37, 73) and config.data.test_scale == 55
  assert tuple(cifar10.get_config('D,S=55').data.train_scale) == (55, 55)
  local = cifar10.get_config('A,runlocal')
  full = cifar10.get_config('A')
  assert local.model.width < full.model.width and local.num_epochs < full.num_epochs
  assert local.model.batch_norm and cifar10.get_config('A,head=gap').model.head == 'gap'
  assert cifar10.get_config('A,runlocal,epochs=0.5').num_epochs == 0.5
  twocore = cifar10.get_config('D,twocore')
  assert twocore.model.width == 0.25 and twocore.optimizer.nesterov
  for sizes in ('runlocal,twocore', 'twocore,amx', 'runlocal,amx'):
    with pytest.raises(ValueError, match='choose one'):
      cifar10.get_config(f'D,{sizes}')
  with pytest.raises(ValueError, match='not runlocal'):
    cifar10.get_config('D,runlocal,muon')
  # Muon alone trains twocore's recipe.
  assert (config_schema.to_json(cifar10.get_config('D,twocore,muon')) ==
          config_schema.to_json(cifar10.get_config('D,muon')))


WHITENED = 'width1_2_bfloat16_epochs12_muon_batch512_nsbfloat16_whitened_altflip_linear'


@pytest.mark.parametrize('size, folder, run, seed', [
    ('amx', 'pilot_budget', 'width1_2_bfloat16_epochs19_batch256_2be2309', 0),
    ('amx', 'pilot_budget', 'width1_2_bfloat16_epochs19_batch256_seed1', 1),
    ('amx', 'pilot_budget', 'width1_2_bfloat16_epochs19_batch256_seed2', 2),
    # Seed 0 trained by a one-off script before optimizer.first_conv existed (the
    # field written into its config.json by hand; the size's own seed 0 matched its
    # errors bit for bit over five epochs; pilot_muon/README.md), seeds 1-2 by the size.
    ('amx,muon', 'pilot_muon', WHITENED, 0),
    ('amx,muon', 'pilot_muon', f'{WHITENED}_seed1', 1),
    ('amx,muon', 'pilot_muon', f'{WHITENED}_seed2', 2),
    ('muon', 'pilot_muon', 'epochs25_muon', 0),
])
def test_sizes_are_the_committed_runs_recipes(size, folder, run, seed):
  # The size the docstring reports on is what those runs trained: their
  # config.json, saved by vgg_jax.train, up to the seed.
  with open(os.path.join(REPO, 'experiments', 'results', folder, run, 'config.json')) as f:
    committed = config_schema.complete(json.load(f))
  config = cifar10.get_config(f'D,{size},folder=ROOT')
  config.seed = seed
  assert config_schema.to_json(config) == committed
  assert (config.model.width, config.model.dtype, config.batch_size,
          config.optimizer.learning_rate, config.optimizer.kernels, config.num_epochs,
          config.optimizer.first_conv, config.optimizer.schedule, config.data.flip) == {
              'amx': (0.5, 'bfloat16', 256, 0.2, 'sgd', 19, 'trained', 'cosine', 'random'),
              'amx,muon': (0.5, 'bfloat16', 512, 0.4, 'muon', 12, 'whitened', 'linear',
                           'alternating'),
              'muon': (0.25, 'float32', 256, 0.2, 'muon', 25, 'trained', 'cosine',
                       'random')}[size]
  # Muon's own settings (the schema's where it is not used).
  assert (config.optimizer.muon_learning_rate, config.optimizer.muon_ns_steps,
          config.optimizer.muon_dtype) == {'amx': (0.02, 5, 'float32'),
                                           'amx,muon': (0.04, 3, 'bfloat16'),
                                           'muon': (0.03, 3, 'float32')}[size]


@pytest.mark.parametrize('name', SWEEP_FILES)
def test_sweep_files_give_named_points_with_seeds(name, tmp_path):
  module, arg = sweep.load_sweep_module(f'configs/sweeps/{name}.py:runlocal')
  base = module.get_config(arg)
  points = sweep.make_points(base, module.get_sweep(arg), str(tmp_path))
  assert {p.config['seed'] for p in points} == {0, 1, 2}
  assert len({p.name for p in points}) == len(points)
  for point in points:
    assert point.config['model']['width'] == 0.125  # runlocal reached the base
    assert 'evals' not in point.config and point.evals
    for spec in point.evals:
      assert evaluation.parse_eval_spec(spec)[0] in evaluation.PROTOCOLS
  assert sweep.load_sweep_module(f'configs/sweeps/{name}.py:runlocal,seeds=1')[0].get_sweep(
      'runlocal,seeds=1')[0]['seed'] == 0


def test_the_campaign_runs_each_configuration_once_per_seed_before_the_next_seed(tmp_path):
  order = continue_sweeps.campaign(seeds=3)
  # 10 configurations, 3 seeds each; each point with every sweep it belongs to.
  assert len(order) == 30
  assert {name for memberships in order for name, _ in memberships} == set(SWEEP_FILES)
  seeds = [memberships[0][1].config['seed'] for memberships in order]
  assert seeds == sorted(seeds)
  d_at_37 = next(m for m in order if m[0][1].name == 'variant=D,seed=0')
  assert [name for name, _ in d_at_37] == ['depth', 'conv1x1', 'scale_jitter']
  assert 'multicrop:auto' in d_at_37[2][1].evals  # the scale sweep's, run while trained
  for memberships in order:
    assert len({p.name for _, p in memberships}) == 1
    for _, p in memberships:
      assert p.config['model']['width'] == 0.25 and p.config['num_epochs'] == 10
      # A path relative to the checkout: the same frozen config on every machine.
      assert p.config['data']['folder'] == continue_sweeps.IMAGES_LINK
  with pytest.raises(ValueError, match='has no train/ directory'):
    continue_sweeps.link_images(str(tmp_path))


def test_a_campaign_at_the_muon_size_has_a_directory_of_its_own():
  assert continue_sweeps.results_dir(size='muon') == os.path.join(
      'experiments', 'results', 'cifar10_muon')
  points = continue_sweeps.campaign(seeds=3, size='muon')
  assert len(points) == 30
  for memberships in points:
    for _, p in memberships:
      assert p.config['optimizer']['kernels'] == 'muon' and p.config['batch_size'] == 256
      assert p.config['num_epochs'] == cifar10.MUON_EPOCHS
      assert p.config['data']['folder'] == continue_sweeps.IMAGES_LINK


def test_a_campaign_at_the_amx_muon_size_trains_issue_15s_recipe():
  assert continue_sweeps.results_dir(size='amx,muon') == os.path.join(
      'experiments', 'results', 'cifar10_amx_muon')
  points = continue_sweeps.campaign(seeds=3, size='amx,muon')
  assert len(points) == 30
  recipe = config_schema.to_json(cifar10.get_config('D,amx,muon'))
  # Every point trains the recipe; the sweeps change the model and the scales only.
  scales_and_source = ('train_scale', 'test_scale', 'name', 'folder')
  for memberships in points:
    for _, p in memberships:
      assert p.config['optimizer'] == recipe['optimizer']
      assert ({k: v for k, v in p.config['data'].items() if k not in scales_and_source} ==
              {k: v for k, v in recipe['data'].items() if k not in scales_and_source})
      assert (p.config['batch_size'], p.config['num_epochs']) == (512, 12)


def test_only_selects_points_by_name_in_campaign_order():
  points = continue_sweeps.campaign(seeds=5, epochs=25)
  chosen = continue_sweeps.select(points, r'^variant=(C|D),seed=[34]$')
  assert [m[0][1].name for m in chosen] == [
      'variant=D,seed=3', 'variant=C,seed=3', 'variant=D,seed=4', 'variant=C,seed=4']
  # The shared point keeps every sweep it belongs to, and so its evaluations.
  assert [name for name, _ in chosen[0]] == ['depth', 'conv1x1', 'scale_jitter']
  with pytest.raises(ValueError, match=r"--only='\^variant=F' matches none of the "
                     r"campaign's points, e\.g\. variant=A,seed=0"):
    continue_sweeps.select(points, '^variant=F')
  with pytest.raises(ValueError, match=r"--only='\(' is not a regular expression"):
    continue_sweeps.select(points, '(')


def test_the_committed_campaign_is_complete():
  # Every point's frozen config matches the sweeps as they are now, so a fresh
  # clone's `continue_sweeps` has nothing to retrain.
  points = continue_sweeps.campaign(seeds=3)
  assert [m[0][1].name for m in points
          if continue_sweeps.pending_memberships(m, continue_sweeps.results_dir())] == []


def test_a_campaign_of_other_epochs_has_a_directory_of_its_own():
  results = continue_sweeps.results_dir(25)
  assert results == os.path.join("experiments", "results", "cifar10_twocore_epochs25")
  points = continue_sweeps.campaign(seeds=3, epochs=25)
  assert len(points) == 30
  for memberships in points:
    for _, p in memberships:
      assert p.config['num_epochs'] == 25 and p.config['model']['width'] == 0.25
  # Its committed points (a campaign in progress commits them as they finish)
  # match the sweeps as they are now: done, none half-committed or out of date.
  # Committed, not merely on disk: a point training here has files of its own.
  tracked = subprocess.run(['git', 'ls-files', '--', results], cwd=continue_sweeps.REPO,
                           capture_output=True, text=True, check=True).stdout.split()
  committed = [m for m in points
               if f'{results}/{m[0][1].name}/train_result.json' in tracked]
  assert committed  # the campaign's first points are in
  assert [m[0][1].name for m in committed
          if continue_sweeps.pending_memberships(m, results)] == []


def test_a_commit_that_fails_names_git_s_reason_and_what_to_commit(tmp_path, monkeypatch):
  name, point = continue_sweeps.campaign(seeds=1)[0][0]
  monkeypatch.setattr(continue_sweeps, 'REPO', str(tmp_path))  # not a git repository
  monkeypatch.setattr(continue_sweeps.time, 'sleep', lambda _: None)
  with pytest.raises(RuntimeError, match=rf'git could not commit {re.escape(point.name)} '
                     r'\(fatal: not a git repository.*\): .* commit results/.* with git'):
    continue_sweeps.commit(name, point, 'results')


def test_a_trained_point_missing_evaluations_without_checkpoints_is_an_error(tmp_path):
  results = str(tmp_path)  # absolute: joined as is
  name, point = continue_sweeps.campaign(seeds=1)[0][0]
  assert continue_sweeps.point_state(name, point, results) == 'new'
  point_dir = tmp_path / point.name
  point_dir.mkdir()
  (point_dir / 'train_result.json').write_text('{}')  # trained on another machine
  with pytest.raises(ValueError, match='checkpoints are not on this machine: delete its '
                     'directory to train it again'):
    continue_sweeps.point_state(name, point, results)
  (point_dir / 'checkpoints' / '3900').mkdir(parents=True)
  assert continue_sweeps.point_state(name, point, results) == 'evaluate'


def test_point_names_are_canonical():
  assert sweep.point_name({'seed': 1, 'model.variant': 'B'}) == 'variant=B,seed=1'
  assert sweep.point_name({'model.variant': 'B', 'model.depths': (1,) * 5,
                           'model.kernel_size': 5, 'seed': 0}) == \
      'variant=B,depths=1-1-1-1-1,kernel_size=5,seed=0'
  assert sweep.point_name({'model.variant': 'D', 'data.train_scale': (37, 73),
                           'evals': ('single',)}) == 'variant=D,train_scale=37-73'
  with pytest.raises(ValueError, match='no field'):
    sweep.make_points(tiny_config('/tmp'), [{'model.varient': 'A'}], '/tmp/x')
  with pytest.raises(ValueError, match="unknown protocol 'dens'"):
    evaluation.parse_eval_spec('dens:auto')


# --------------------------------------------------------------------------
# Warm start, as a pure function.
# --------------------------------------------------------------------------


def init_params(variant, seed, **kwargs):
  """(model, variables): the model's shapes filled with seeded random numbers
  (a real init runs op by op here, and is ten times slower)."""
  model = VGG(**{'variant': variant, 'image_size': 32, 'num_classes': 10, 'width': 1 / 16,
                 'fc_width': 16, 'batch_norm': True, **kwargs})
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  rng = np.random.default_rng(seed)
  return model, jax.tree_util.tree_map(
      lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


def test_copy_layers_from_a_into_d_takes_the_papers_seven_layers():
  model_a, source = init_params('A', 0)
  model_d, fresh = init_params('D', 1)
  params, copied = warm_start.copy_layers(fresh['params'], source['params'],
                                          model_a.layers(), model_d.layers())
  assert sorted(copied) == sorted(COPIED_FROM_A)
  for name in params:
    same = name in COPIED_FROM_A
    expected = source['params'][name] if same else fresh['params'][name]
    jax.tree_util.tree_map(np.testing.assert_array_equal, params[name], expected)
  # Same shapes in A and D, but not one of the paper's layers: stays fresh.
  assert not np.array_equal(params['conv4_1']['kernel'], source['params']['conv4_1']['kernel'])

  # A run of the same architecture (S = 384 from S = 256) gives everything.
  _, other_a = init_params('A', 2)
  params, copied = warm_start.copy_layers(other_a['params'], source['params'],
                                          model_a.layers(), model_a.layers())
  assert sorted(copied) == sorted(other_a['params'])
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, source['params'])


def test_copy_layers_rejects_other_shapes():
  model_a, source = init_params('A', 0)
  wide, fresh = init_params('D', 1, width=1 / 8)  # width overrides
  with pytest.raises(ValueError, match=r"conv1_1\['kernel'\]: \(3, 3, 3, 4\) in the source, "
                     r'\(3, 3, 3, 8\) here \(and \d+ more layers\)'):
    warm_start.copy_layers(fresh['params'], source['params'], model_a.layers(), wide.layers())
  five, fresh = init_params('B', 1, depths=(1,) * 5, kernel_size=5)
  with pytest.raises(ValueError, match=r'\(3, 3, 3, 4\) in the source, \(5, 5, 3, 4\) here'):
    warm_start.copy_layers(fresh['params'], source['params'], model_a.layers(), five.layers())
  deep = VGG(variant='D', width=1 / 16)
  with pytest.raises(ValueError, match='the source network has no conv3_2'):
    warm_start.layers_to_copy(five.layers(), deep.layers())


# --------------------------------------------------------------------------
# The two-point sweep, end to end through the command line.
# --------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory):
  """(sweep file, workdir, first run's stdout): A, then B from A, 8 steps each."""
  root = tmp_path_factory.mktemp('sweep')
  sweep_file = root / 'tiny.py'
  sweep_file.write_text(TINY_SWEEP.format(data_dir=str(root / 'tfds')))
  workdir = root / 'runs'
  proc = run_cli('experiments.sweep', f'--sweep={sweep_file}', f'--workdir={workdir}',
                 '--parallel=2')
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  return sweep_file, workdir, proc.stdout


def test_sweep_trains_and_evaluates_each_point(tiny_sweep):
  _, workdir, stdout = tiny_sweep
  assert 'sweep tiny: 2 points' in stdout and '0 done, 2 to run' in stdout
  assert stdout.index(f'finished {A_POINT}') < stdout.index(f'started {B_POINT}')
  for name in (A_POINT, B_POINT):
    point_dir = workdir / name
    assert checkpoints.available_steps(str(point_dir))[-1] == 8
    evals = json.loads((point_dir / 'evals.json').read_text())
    assert evals == {'single': 'single_48.json', 'single:auto': 'single_32-48-64.json',
                     'single:48': 'single_48.json'}  # measured once
    for file in evals.values():
      assert json.loads((point_dir / 'eval' / file).read_text())['num_examples'] == 100
    trained = json.loads((point_dir / 'train_result.json').read_text())
    [segment] = trained['segments']  # trained by one process, on this machine
    assert segment['steps'] == [0, 8] and segment['seconds'] == trained['wall_seconds'] > 0
    assert segment['machine'] == machine.describe()
  manifest = json.loads((workdir / 'sweeps' / 'tiny.json').read_text())
  assert [p['name'] for p in manifest['points']] == [A_POINT, B_POINT]


def test_warm_started_point_holds_as_layers_and_logs_them(tiny_sweep):
  _, workdir, _ = tiny_sweep
  b_config = json.loads((workdir / B_POINT / 'config.json').read_text())
  assert b_config['init_from'] == str(workdir / A_POINT)
  log = (workdir / B_POINT / 'log.txt').read_text()
  assert re.search(r'init_from .*variant=A,seed=0 \(step 8, variant A\): copied conv1_1, '
                   r'bn1_1, conv2_1, bn2_1, conv3_1, bn3_1, conv3_2, bn3_2, fc1, fc2, fc3; '
                   r'fresh: conv1_2, bn1_2, conv2_2, bn2_2, conv4_1', log), log[-2000:]
  a = checkpoints.restore_params(str(workdir / A_POINT))
  b = checkpoints.restore_params(str(workdir / B_POINT))  # 8 steps at learning rate 0
  for name in COPIED_FROM_A:
    jax.tree_util.tree_map(np.testing.assert_array_equal, b[name], a[name])
  for name in ('conv4_1', 'conv4_2', 'conv5_1', 'conv5_2'):  # same shapes, not copied
    assert not np.array_equal(b[name]['kernel'], a[name]['kernel'])
  assert 'conv1_2' in b and 'conv1_2' not in a


def test_rerun_does_no_work_twice_and_resumes_what_is_unfinished(tiny_sweep):
  sweep_file, workdir, _ = tiny_sweep
  before = mtimes(workdir)
  proc = run_cli('experiments.sweep', f'--sweep={sweep_file}', f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '2 done, 0 to run' in proc.stdout and 'started' not in proc.stdout
  assert mtimes(workdir) == before  # not a file written

  # B stopped after its step-4 checkpoint; A lost one evaluation.
  stopped, a_dir = workdir / B_POINT, workdir / A_POINT
  (stopped / 'train_result.json').unlink()
  subprocess.run(['rm', '-rf', os.path.join(checkpoints.checkpoint_dir(str(stopped)), '8')],
                 check=True)
  (a_dir / 'eval' / 'single_32-48-64.json').unlink()
  single = json.loads((stopped / 'eval' / 'single_48.json').read_text())
  # What a process stopped at step 4 on another machine recorded, and a stale
  # record of a run that did not lead to this checkpoint.
  earlier = {'steps': [0, 4], 'seconds': 1000.0, 'machine': {'cpu': 'elsewhere'}}
  stale = {'steps': [0, 6], 'seconds': 5.0, 'machine': {}}
  (stopped / 'train_segments.json').write_text(json.dumps([earlier]))
  assert point_worker.earlier_segments(str(stopped), 4) == [earlier]
  assert point_worker.earlier_segments(str(stopped), 0) == []  # trained afresh
  (stopped / 'train_segments.json').write_text(json.dumps([stale]))
  assert point_worker.earlier_segments(str(stopped), 4) == []
  (stopped / 'train_segments.json').write_text(json.dumps([earlier]))
  before = mtimes(workdir)
  proc = run_cli('experiments.sweep', f'--sweep={sweep_file}', f'--workdir={workdir}',
                 '--parallel=2')
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  # A is trained, so B need not wait for its evaluation: both start at once.
  assert f'started {A_POINT} (evaluate)' in proc.stdout
  assert f'started {B_POINT} (resume)' in proc.stdout
  assert proc.stdout.index(f'started {B_POINT}') < proc.stdout.index('finished')
  after = mtimes(workdir)
  changed = {f for f in after if after[f] != before.get(f)}
  # A: only the missing evaluation; no training, no other evaluation.
  assert {f for f in changed if f.startswith(A_POINT)} == {
      f'{A_POINT}/eval/single_32-48-64.json', f'{A_POINT}/log.txt'}
  # B: trained from step 4 to 8 again (not warm-started again), to the same
  # weights: its training's last evaluation, recorded as 'single', is the
  # same; the multi-scale evaluation was done and stays.
  assert f'{B_POINT}/train_result.json' in changed
  assert f'{B_POINT}/eval/single_32-48-64.json' not in changed
  assert json.loads((stopped / 'eval' / 'single_48.json').read_text())['top1_error'] == \
      single['top1_error']
  assert checkpoints.available_steps(str(stopped))[-1] == 8
  assert [json.loads(l)['step'] for l in open(stopped / 'metrics.jsonl')] == [4, 8]
  trained = json.loads((stopped / 'train_result.json').read_text())
  assert [s['steps'] for s in trained['segments']] == [[0, 4], [4, 8]]
  assert trained['segments'][0] == earlier
  assert trained['wall_seconds'] == 1000.0 + trained['segments'][1]['seconds'] > 1000.0
  log = (stopped / 'log.txt').read_text()
  assert 'resumed from the checkpoint at step 4' in log and log.count('copied conv1_1') == 1


def long_point(tiny_sweep, tmp_path):
  """A copy of the tiny sweep's point A that would train far longer than a test."""
  _, workdir, _ = tiny_sweep
  spec = json.loads((workdir / A_POINT / 'point.json').read_text())
  spec['config'].update(num_train_steps=100_000, checkpoint_every_steps=100_000)
  point_dir = tmp_path / A_POINT
  point_dir.mkdir()
  (point_dir / 'point.json').write_text(json.dumps(spec))
  return point_dir


def signal_during_training(command, signum, log_path):
  """Runs `command`, sends `signum` a few steps into training; (exit code, log)."""
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(command, cwd=REPO, env=command_env(), stdout=log,
                            stderr=subprocess.STDOUT)
    try:
      deadline = time.monotonic() + 300
      while 'training steps' not in log_path.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.05)
      time.sleep(1.0)  # a few steps in
      proc.send_signal(signum)
      code = proc.wait(300)
    finally:
      proc.kill()
  return code, log_path.read_text()


def test_a_point_stopped_by_sigterm_checkpoints_and_exits_for_a_rerun(tiny_sweep, tmp_path):
  point_dir = long_point(tiny_sweep, tmp_path)
  code, log = signal_during_training(
      [sys.executable, '-m', 'experiments.point', str(point_dir)], signal.SIGTERM,
      tmp_path / 'log.txt')
  assert code == faults.PREEMPTED_EXIT_CODE
  last = log.strip().splitlines()[-1]
  step = int(re.search(r'experiments.point: preempted \(SIGTERM\) at step (\d+)', last).group(1))
  assert checkpoints.available_steps(str(point_dir)) == [step]
  assert not (point_dir / 'train_result.json').exists()
  # The stopped process's share of the training, for the rerun's total.
  [segment] = json.loads((point_dir / 'train_segments.json').read_text())
  assert segment['steps'] == [0, step] and segment['seconds'] > 0


# A SLURM job as submitit runs it: submitit's USR2 handler (here a stand-in that
# records the call) requeues the job and exits with -1.
SUBMITIT_JOB = '''
import signal, sys
from absl import logging
from experiments import point
logging.set_verbosity(logging.INFO)
def requeue(signum, frame):
  open(sys.argv[2], 'w').write(signal.Signals(signum).name)
  sys.exit(-1)
signal.signal(signal.SIGUSR2, requeue)
try:
  point.PointJob()(sys.argv[1])
except Exception as e:
  print('job error:', e)
'''


def test_submitit_time_out_notice_checkpoints_the_step_reached_then_requeues(
    tiny_sweep, tmp_path):
  point_dir = long_point(tiny_sweep, tmp_path)
  requeued = tmp_path / 'requeued'
  code, log = signal_during_training(
      [sys.executable, '-c', SUBMITIT_JOB, str(point_dir), str(requeued)], signal.SIGUSR2,
      tmp_path / 'log.txt')
  assert code == 255, log[-3000:]  # submitit's exit after requeueing
  assert requeued.read_text() == 'SIGUSR2'  # submitit's handler ran, after the save
  step = int(re.search(r'preempted \(SIGUSR2\) at step (\d+): saved a checkpoint', log)[1])
  assert checkpoints.available_steps(str(point_dir)) == [step]
  assert not (point_dir / 'train_result.json').exists()
  # The stopped process's share of the training, for the rerun's total.
  [segment] = json.loads((point_dir / 'train_segments.json').read_text())
  assert segment['steps'] == [0, step] and segment['seconds'] > 0


def test_changed_config_is_an_error_not_a_mix(tiny_sweep):
  sweep_file, workdir, _ = tiny_sweep
  proc = run_cli('experiments.sweep', f'--sweep={sweep_file}', f'--workdir={workdir}',
                 '--sweep.batch_size=8')
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode != 0
  assert last.startswith(f'experiments.sweep: error: point {A_POINT}') and \
      'batch_size: 16 -> 8' in last


@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')  # as in the test below
def test_local_launcher_starts_a_warm_start_after_its_source(tmp_path, monkeypatch, capsys):
  """Scheduling alone: each worker only writes train_result.json."""
  base = tiny_config(str(tmp_path))
  with base.unlocked():
    base.evals = ('single',)
  points = sweep.make_points(base, [
      {'model.variant': 'B', 'seed': 0, 'init_from': '@variant=A,seed=0'},
      {'model.variant': 'A', 'seed': 0}, {'model.variant': 'A', 'seed': 1}], str(tmp_path))
  assert points[0].depends_on == ('variant=A,seed=0',)
  assert points[0].config['init_from'] == str(tmp_path / A_POINT)
  for point in points:
    sweep.prepare(point, str(tmp_path), 'order')
  monkeypatch.setattr(sweep, 'worker_command', lambda point_dir: [
      sys.executable, '-c', f'import time; time.sleep(0.5); '
      f'open({os.path.join(point_dir, "train_result.json")!r}, "w").write("{{}}")'])
  failed = sweep.launch_local(points, str(tmp_path), parallel=2, gpus_per_point=0,
                              finished=set())
  out = capsys.readouterr().out
  assert failed == []
  b, a1 = 'variant=B,from=variant=A+seed=0,seed=0', 'variant=A,seed=1'
  assert out.index(f'started {A_POINT}') < out.index(f'started {a1}') < \
      out.index(f'finished {A_POINT}') < out.index(f'started {b}')


STOPPABLE_WORKER = """
import ctypes, os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(faults.PREEMPTED_EXIT_CODE))
death_signal = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(death_signal))  # 2: PR_GET_PDEATHSIG
own_session = os.getsid(0) == os.getpid()
with open(os.path.join(sys.argv[1], 'worker.txt'), 'w') as f:
  f.write(f'{death_signal.value} {own_session}')
time.sleep(60)
""".replace('faults.PREEMPTED_EXIT_CODE', str(faults.PREEMPTED_EXIT_CODE))


# The launcher forks its points (to run a function before exec): JAX warns of
# forks where its threads run, as in this test's process, not in a launcher's.
@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')
def test_a_stopped_local_sweep_stops_its_running_points_and_starts_no_more(
    tmp_path, monkeypatch, capsys):
  """SIGTERM (or Ctrl-C) to the launcher: each running point gets SIGTERM (a real
  one checkpoints the step it reached), nothing more starts. Each point runs in a
  session of its own (a Ctrl-C reaches the launcher only) and gets SIGTERM if the
  launcher dies, however it dies."""
  points = sweep.make_points(tiny_config(str(tmp_path)), [{'seed': s} for s in range(3)],
                             str(tmp_path))
  for point in points:
    sweep.prepare(point, str(tmp_path), 'stop')
  monkeypatch.setattr(sweep, 'worker_command',
                      lambda point_dir: [sys.executable, '-c', STOPPABLE_WORKER, point_dir])
  reports = [tmp_path / point.name / 'worker.txt' for point in points]

  def stop_when_both_run():
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in reports[:2]) and time.monotonic() < deadline:
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)

  before = signal.getsignal(signal.SIGTERM)
  threading.Thread(target=stop_when_both_run, daemon=True).start()
  start = time.monotonic()
  with sweep.StopRequest() as stop:
    failed = sweep.launch_local(points, str(tmp_path), parallel=2, gpus_per_point=0,
                                finished=set(), stop=stop)
  assert signal.getsignal(signal.SIGTERM) == before
  assert time.monotonic() - start < 50  # not the workers' 60 s
  out = capsys.readouterr().out
  assert stop.received == 'SIGTERM' and failed == []
  assert 'SIGTERM: stopping 2 running point(s)' in out
  for point in points[:2]:
    assert f'stopped {point.name} (exit status {faults.PREEMPTED_EXIT_CODE})' in out
  assert f'started {points[2].name}' not in out and not reports[2].exists()
  assert [r.read_text() for r in reports[:2]] == [f'{int(signal.SIGTERM)} True'] * 2


def test_the_launcher_opens_each_dataset_once_and_fails_on_one_it_cannot_read(
    tmp_path, monkeypatch):
  opened = []
  real = sweep.data.dataset_info
  monkeypatch.setattr(sweep.data, 'dataset_info', lambda cfg: opened.append(cfg.name) or real(cfg))
  base = tiny_config(str(tmp_path / 'tfds'))
  points = sweep.make_points(base, [{'seed': 0}, {'seed': 1}, {'model.variant': 'B'}],
                             str(tmp_path / 'sweep'))
  sweep.open_datasets(points)
  assert opened == ['vgg_shapes']
  base.data.update(name='image_folder', folder=str(tmp_path / 'no_such_folder'))
  points = sweep.make_points(base, [{'seed': 0}], str(tmp_path / 'sweep'))
  with pytest.raises(ValueError, match='no_such_folder.* does not exist'):
    sweep.open_datasets(points)


def test_a_point_with_a_bad_value_fails_the_sweep_before_anything_is_written(tmp_path):
  with pytest.raises(ValueError, match=r'^point width=0\.0: width=0\.0 must be a positive'):
    sweep.make_points(tiny_config(str(tmp_path / 'tfds')),
                      [{'model.width': 0.5}, {'model.width': 0.0}], str(tmp_path / 'sweep'))
  assert not os.path.exists(tmp_path / 'sweep')


def test_slurm_dry_run_prints_one_job_per_point(tiny_sweep, tmp_path):
  sweep_file, _, _ = tiny_sweep
  workdir = tmp_path / 'slurm_sweep'
  proc = run_cli('experiments.sweep', f'--sweep={sweep_file}', f'--workdir={workdir}',
                 '--launcher=slurm', '--dry_run', '--slurm_nodes=2',
                 '--slurm_gpus_per_node=8', '--slurm_partition=gpu', '--slurm_mem_gb=64',
                 '--slurm_time_min=600', '--slurm_setup=module load cuda')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not workdir.exists()  # nothing written
  scripts = proc.stdout.split('### sbatch script of point ')[1:]
  names = [A_POINT, B_POINT]
  assert [s.split(' ', 1)[0] for s in scripts] == names
  for name, script in zip(names, scripts):
    body = script.split('\n', 1)[1]
    assert body.startswith('#!/bin/bash\n')
    flags_ = dict(re.findall(r'^#SBATCH --([a-z-]+)=(.*)$', body, re.M))
    assert flags_['nodes'] == '2' and flags_['gpus-per-node'] == '8'
    assert flags_['ntasks-per-node'] == '8'  # one JAX process per GPU
    assert flags_['partition'] == 'gpu' and flags_['mem'] == '64GB'
    assert flags_['time'] == '600' and flags_['job-name'] == f'tiny.{name}'
    assert f'{workdir}/{name}/slurm/' in flags_['output']
    assert '\nmodule load cuda\n' in body
    assert re.search(r'^srun .* -m submitit\.core\._submit .*/slurm$', body, re.M)
  assert 'dependency' not in scripts[0]
  assert "#SBATCH --dependency='afterok:<job of variant=A,seed=0>'" in scripts[1]


def test_slurm_submission_waits_for_sources_and_skips_queued_points(tmp_path, monkeypatch,
                                                                   capsys):
  """Submission without a cluster: submitit's executor replaced by a recorder."""
  base = tiny_config(str(tmp_path))
  with base.unlocked():
    base.evals = ('single',)
  points = sweep.make_points(base, [
      {'model.variant': 'A', 'seed': 0},
      {'model.variant': 'B', 'seed': 0, 'init_from': '@variant=A,seed=0'}], str(tmp_path))
  for point in points:
    sweep.prepare(point, str(tmp_path), 'tiny')
  jobs = []

  class Recorder:
    def __init__(self):
      self.parameters = {}

    def update_parameters(self, **parameters):
      self.parameters.update(parameters)

    def submit(self, fn, point_dir):
      jobs.append((self.parameters, fn, point_dir))
      return types.SimpleNamespace(job_id=str(100 + len(jobs)))

  monkeypatch.setattr(sweep, '_slurm_executor', lambda *args: Recorder())
  options = types.SimpleNamespace(
      slurm_gpus_per_node=4, slurm_nodes=1, slurm_time_min=60, slurm_partition='gpu',
      slurm_account=None, slurm_qos=None, slurm_constraint=None, slurm_cpus_per_task=8,
      slurm_mem_gb=None, slurm_setup=None, slurm_max_requeues=3)
  assert sweep.launch_slurm(points, str(tmp_path), 'tiny', options, dry_run=False,
                            finished=set()) == ['101', '102']
  (a_params, a_job, a_dir), (b_params, _, b_dir) = jobs
  assert isinstance(a_job, point_worker.PointJob) and a_dir == str(tmp_path / A_POINT)
  assert a_params['ntasks_per_node'] == a_params['gpus_per_node'] == 4
  assert 'dependency' not in a_params and b_params['dependency'] == 'afterok:101'
  assert json.loads((tmp_path / A_POINT / 'slurm_job.json').read_text())['job_id'] == '101'

  # Submitted again while both jobs wait in the queue: nothing new.
  monkeypatch.setattr(submitit, 'SlurmJob',
                      lambda folder, job_id: types.SimpleNamespace(state='PENDING'))
  capsys.readouterr()
  assert sweep.launch_slurm(points, str(tmp_path), 'tiny', options, dry_run=False,
                            finished=set()) == []
  assert 'queued already: variant=A,seed=0 is SLURM job 101' in capsys.readouterr().out
  assert len(jobs) == 2


def test_jax_distributed_reads_the_slurm_job(monkeypatch):
  """The environment srun gives task 9 of a 2-node x 8-GPU job."""
  from jax._src import clusters
  env = dict(SLURM_JOB_ID='4242', SLURM_STEP_NODELIST='gpu[017-018]', SLURM_NTASKS='16',
             SLURM_PROCID='9', SLURM_LOCALID='1', SLURM_STEP_NUM_NODES='2')
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  address, count, process_id, local = clusters.ClusterEnv.auto_detect_unset_distributed_params(
      None, None, None, None, None, None)
  assert address.startswith('gpu017:') and (count, process_id, local) == (16, 9, [1])
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *a, **k: calls.append((a, k)))
  monkeypatch.setattr(jax, 'process_index', lambda: 9)
  parallel.initialize_distributed()
  assert calls == [((), {})]  # no arguments: jax reads SLURM itself


# --------------------------------------------------------------------------
# Warm start inside training.
# --------------------------------------------------------------------------


def test_apply_init_from_places_the_copies_and_checks_shapes(tiny_sweep, tmp_path):
  _, workdir, _ = tiny_sweep
  source = workdir / A_POINT
  mesh = parallel.make_mesh()

  def fresh_state(**model_fields):
    config = tiny_config(str(tmp_path), **{f'model.{k}': v for k, v in model_fields.items()})
    config.init_from = str(source)
    model = VGG.from_config(config.model, 10, 32)
    tx = optax.sgd(0.1)
    return config, model, train.create_train_state(model, tx, jax.random.key(7), 32, mesh)

  config, model, state = fresh_state(variant='D')
  started = warm_start.apply_init_from(config, state, model)
  a = checkpoints.restore_variables(str(source))
  for name in COPIED_FROM_A:
    jax.tree_util.tree_map(np.testing.assert_array_equal, started.params[name],
                           a['params'][name])
    assert started.params[name]['bias' if 'bn' in name else 'kernel'].sharding == \
        state.params[name]['bias' if 'bn' in name else 'kernel'].sharding
  jax.tree_util.tree_map(np.testing.assert_array_equal, started.batch_stats['bn3_2'],
                         a['batch_stats']['bn3_2'])
  for name in ('conv3_3', 'conv4_1', 'conv5_3'):  # fresh, as created
    assert started.params[name] is state.params[name]
  assert warm_start.apply_init_from(tiny_config(str(tmp_path)), state, model) is state

  wide = VGG.from_config(tiny_config(str(tmp_path), **{'model.width': 1 / 8}).model, 10, 32)
  shapes = jax.eval_shape(lambda: wide.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  with pytest.raises(ValueError, match=r'cannot warm-start this model: layer shapes differ: '
                     r"conv1_1\['kernel'\].*width=0.0625.*width=0.125") as raised:
    warm_start.apply_init_from(config, types.SimpleNamespace(**shapes), wide)
  assert_in_readme(cli.error_line('vgg_jax.train', raised.value), DIR=source)
  config.init_from = str(tmp_path / 'no_run_here')
  with pytest.raises(FileNotFoundError) as raised:
    warm_start.apply_init_from(config, state, model)
  assert_in_readme(cli.error_line('vgg_jax.train', raised.value), DIR=tmp_path / 'no_run_here')


# --------------------------------------------------------------------------
# The report.
# --------------------------------------------------------------------------


def test_report_of_the_sweep_is_regenerated_from_its_csv(tiny_sweep, tmp_path):
  _, workdir, _ = tiny_sweep
  out = tmp_path / 'results'
  report.make_report(str(workdir), str(out))
  rows = list(csv.DictReader(open(out / 'results.csv')))
  assert [(r['point'], r['protocol'], r['test_scales']) for r in rows] == [
      (A_POINT, 'single', '48'), (A_POINT, 'single', '32,48,64'),
      (B_POINT, 'single', '48'), (B_POINT, 'single', '32,48,64')]
  assert {r['sweep'] for r in rows} == {'tiny'}
  assert (rows[0]['weight_layers'], rows[2]['weight_layers']) == ('11', '13')
  for row in (rows[0], rows[2]):
    evaluated = json.loads((workdir / row['point'] / 'eval' / 'single_48.json').read_text())
    assert float(row['top1_error']) == evaluated['top1_error']  # exactly, through the CSV
  first = (out / 'report.md').read_text()
  assert f'| B | 13 | [32,64] | 48 | centre crop | {100 * float(rows[2]["top1_error"]):.1f} |' in first
  # Each point's training time beside the machine that trained it.
  here = machine.label(machine.describe())
  assert rows[0]['machine'] == here and rows[2]['machine'].endswith(here)
  trained = json.loads((workdir / A_POINT / 'train_result.json').read_text())
  assert f'| {A_POINT} | {here} | {report._clock(trained["wall_seconds"])} | ' in first
  # The curve: each point's evaluations during training, from its metrics.jsonl.
  curves = report.read_csv(str(out / 'curves.csv'), report.CURVE_NUMERIC)
  for name in (A_POINT, B_POINT):
    logged = [json.loads(line) for line in open(workdir / name / 'metrics.jsonl')]
    assert [(r['step'], r['top1_error']) for r in curves if r['point'] == name] == [
        (l['step'], l['eval/top1_error']) for l in logged if 'eval/top1_error' in l]
  assert '![tiny: test error during training](tiny_curves.png)' in first
  assert '## Verdicts' in first
  (out / 'report.md').unlink()
  (out / 'tiny.png').unlink()
  (out / 'tiny_curves.png').unlink()
  proc = run_cli('experiments.report', str(out), '--from_csv')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (out / 'report.md').read_text() == first
  assert (out / 'tiny.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert (out / 'tiny_curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('folder', ['pilot_1epoch', 'cifar10_twocore', 'cifar10_twocore_epochs25'])
def test_committed_cifar10_report_is_regenerated_from_its_csv(folder, tmp_path):
  committed = os.path.join(REPO, 'experiments', 'results', folder)
  assert os.path.isfile(os.path.join(committed, report.CSV_FILE))  # every folder here has results
  for file in (report.CSV_FILE, report.CURVES_FILE):
    if os.path.isfile(os.path.join(committed, file)):
      shutil.copy(os.path.join(committed, file), tmp_path)
  report.make_report(str(tmp_path), from_csv=True)
  with open(os.path.join(committed, report.REPORT_FILE)) as f:
    assert (tmp_path / report.REPORT_FILE).read_text() == f.read()
  rows = report.read_csv(str(tmp_path / report.CSV_FILE))
  assert {r['sweep'] for r in rows} <= set(SWEEP_FILES)
  for sweep_name in {r['sweep'] for r in rows}:
    assert os.path.isfile(os.path.join(committed, f'{sweep_name}.png'))
  if folder == 'pilot_1epoch':
    assert {r['sweep'] for r in rows} == set(SWEEP_FILES)
    assert {r['seed'] for r in rows} == {0, 1, 2}


def test_a_shared_point_shows_in_each_sweep_the_evaluations_that_sweep_asked_for():
  # VGG-D at S = 37 belongs to three sweeps and holds all their evaluations; the
  # conv1x1 sweep's table and plot show its own three, not the scale sweep's
  # test scales up to 73 (whose errors of up to 72 % squashed B, C and D together).
  campaign_dir = os.path.join(REPO, 'experiments', 'results', 'cifar10_twocore_epochs25')
  rows = report.run_rows(os.path.join(campaign_dir, 'variant=D,seed=0'),
                         report._sweep_manifests(campaign_dir))
  shown = {sweep: sorted({(r['protocol'], r['test_scales']) for r in rows if r['sweep'] == sweep})
           for sweep in ('depth', 'conv1x1', 'scale_jitter')}
  assert shown['conv1x1'] == shown['depth'] == [
      ('dense', '32,37,42'), ('dense', '37'), ('single', '37')]
  assert ('single', '73') in shown['scale_jitter']
  assert ('multicrop', '32,37,42') in shown['scale_jitter']
  assert len(shown['scale_jitter']) == 10
  # Without a manifest (a run outside any sweep), every evaluation shows.
  assert len(report.run_rows(os.path.join(campaign_dir, 'variant=D,seed=0'), {})) == 10 * 3


def test_budget_times_each_logged_interval_at_its_rate():
  logged = [{'step': 100, 'img_per_sec': 100.0},
            {'step': 150, 'eval/top1_error': 0.5, 'eval/seconds': 3.0},
            {'step': 200, 'img_per_sec': 50.0, 'eval/top1_error': 0.4, 'eval/seconds': 3.0}]
  # 100 steps of 10 images at 100 img/s, then 100 more at 50 img/s.
  assert budget.training_seconds(logged, batch_size=10) == {100: 10.0, 150: 10.0, 200: 30.0}


def test_budget_times_an_interval_with_an_untimed_evaluation_at_its_neighbours_rate():
  # Before the loop waited for the queued steps, an evaluation inside an interval
  # (no `eval/seconds`) made it read fast: it takes the rate of the next interval
  # without one, or of the last before it; evaluations at a logged step came after
  # the log's wait and leave their interval as it was.
  logged = [{'step': 100, 'img_per_sec': 40.0},
            {'step': 150, 'eval/top1_error': 0.5},
            {'step': 200, 'img_per_sec': 150.0},
            {'step': 300, 'img_per_sec': 100.0, 'eval/top1_error': 0.4},
            {'step': 350, 'eval/top1_error': 0.3},
            {'step': 400, 'img_per_sec': 150.0, 'eval/top1_error': 0.2}]
  assert budget.interval_rates(logged) == [(0, 100, 40.0), (100, 200, 100.0),
                                           (200, 300, 100.0), (300, 400, 100.0)]
  assert budget.training_seconds(logged, batch_size=10) == {
      100: 25.0, 150: 25.0, 200: 35.0, 300: 45.0, 350: 45.0, 400: 55.0}


@pytest.mark.parametrize('folder, rows', [
    # The recipe as it is and with weight decay 1e-3, after 10 epochs.
    ('pilot_levers', ['| `glorot_seed0` | D | 0.25 | float32 | 10 | 18.3 % |',
                      '| `weight_decay_1e-3_seed0` | D | 0.25 | float32 | 10 | 17.6 % |']),
    # SGD and Muon after 2 epochs, the size `muon` after its 25, and `amx,muon` after
    # 12 at batch 256 in float32 products, then at batch 512 in bfloat16 products.
    ('pilot_muon', ['| `epochs2_sgd` | D | 0.25 | float32 | 2 | 30.6 % |',
                    '| `epochs2_muon0.02` | D | 0.25 | float32, Muon | 2 | 24.5 % |',
                    '| `epochs25_muon` | D | 0.25 | float32, Muon | 25 | 14.0 % |',
                    '| `epochs25_muon_seed2` | D | 0.25 | float32, Muon | 25 | 14.8 % |',
                    '| `width1_2_bfloat16_epochs12_muon` | D | 0.5 | bfloat16, Muon | 12 | '
                    '12.4 % | 18.8 min |',
                    '| `width1_2_bfloat16_epochs12_muon_batch512_nsbfloat16` | D | 0.5 | '
                    'bfloat16, Muon (bfloat16 products) | 12 | 12.8 % | 14.7 min |']),
])
def test_committed_pilot_budget_is_regenerated_from_its_runs(folder, rows, tmp_path):
  committed = os.path.join(REPO, 'experiments', 'results', folder)
  shutil.copytree(committed, tmp_path / 'runs')
  with open(budget.write_budget(str(tmp_path / 'runs'))) as f:
    text = f.read()
  assert text == open(os.path.join(committed, budget.MARKDOWN)).read()
  for row in rows:
    assert row in text


def test_committed_budget_is_regenerated_from_its_runs(tmp_path):
  committed = os.path.join(REPO, 'experiments', 'results', 'pilot_budget')
  shutil.copytree(committed, tmp_path / 'runs')
  path = budget.write_budget(str(tmp_path / 'runs'), goal=12, budget_tflop=305)
  with open(os.path.join(committed, budget.MARKDOWN)) as f:
    assert open(path).read() == f.read()
  assert (tmp_path / 'runs' / budget.PLOT).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  # The sweeps' recipe at 30 epochs: 14.8 % after 27 min wall, 25.6 of them training
  # (the intervals with an evaluation inside at their neighbours' rates);
  # width 1/2's 12 %: 11,700 steps of 128 images at 472,751,616 FLOPs each; in
  # bfloat16, 5,460 steps of the same at 361 GFLOP/s.
  text = open(path).read()
  assert '| `epochs30` | D | 0.25 | float32 | 30 | 14.8 % | 25.6 min |' in text
  assert ('| `width1_2_epochs30` | D | 0.5 | float32 | 30 | 12.1 % | 43.1 min | 708 TFLOP |'
          in text)
  assert ('| `width1_2_bfloat16_epochs14` | D | 0.5 | bfloat16 | 14 | 14.1 % | 15.3 min | '
          '330 TFLOP | 361 GFLOP/s |' in text)
  with pytest.raises(ValueError, match='no run'):
    budget.write_budget(str(tmp_path / 'empty'))
  # The plot's colours: one per width, dtype and batch, float32 first, every run in one.
  curves = budget.find_curves(committed)
  groups = budget.families(curves)
  assert list(groups) == [
      'width 0.25, float32, batch 128', 'width 0.375, float32, batch 128',
      'width 0.5, float32, batch 128', 'width 0.5, bfloat16, batch 128',
      'width 0.5, bfloat16, batch 256', 'width 0.5, bfloat16, batch 512']
  assert sum(map(len, groups.values())) == len(curves)
  assert [c['run'] for c in groups['width 0.5, float32, batch 128']] == [
      'width1_2', 'width1_2_epochs13', 'width1_2_epochs20', 'width1_2_epochs30']


def _rows(sweep_name, config, train_scale, protocol, test_scales, errors, **extra):
  return [dict({c: '' for c in report.COLUMNS}, sweep=sweep_name, order=s, point=f'{config}-{s}',
               seed=s, config=config, weight_layers=extra.get('layers', 11),
               train_scale=train_scale, protocol=protocol, test_scales=test_scales, flip=False,
               top1_error=top1, top5_error=top1 / 3, num_examples=10000)
          for s, top1 in enumerate(errors)]


def test_report_table_gives_mean_and_std_over_seeds(tmp_path):
  rows = (_rows('depth', 'A', '37', 'single', '37', [0.30, 0.32, 0.31]) +
          _rows('depth', 'E', '37', 'single', '37', [0.20, 0.22, 0.24], layers=19) +
          [r for q in (32, 46, 55) for r in
           _rows('scale_jitter', 'D', '37', 'single', str(q), [0.3, 0.3 + q / 1000]) +
           _rows('scale_jitter', 'D', '[37,73]', 'single', str(q), [0.25])])
  report.write_csv(rows, str(tmp_path / 'results.csv'))
  path = report.make_report(str(tmp_path), from_csv=True)
  text = open(path).read()
  assert '| A | 11 | 37 | 37 | centre crop | 31.0 ± 1.0 | 10.3 ± 0.3 | 0,1,2 |' in text
  assert '| E | 19 | 37 | 37 | centre crop | 22.0 ± 2.0 | 7.3 ± 0.7 | 0,1,2 |' in text
  assert '| D | 11 | [37,73] | 55 | centre crop | 25.0 | 8.3 | 0 |' in text
  assert text.index('## depth') < text.index('## scale_jitter')
  for plot in ('depth.png', 'scale_jitter.png'):
    assert (tmp_path / plot).read_bytes()[:4] == b'\x89PNG'
  assert report.make_report(str(tmp_path), from_csv=True) == path
  assert open(path).read() == text


def test_compute_counts_each_training_once_per_sweep_and_each_shared_pass_once(tmp_path):
  def row(sweep_name, point, protocol, scales, train, evaluation):
    return dict({c: '' for c in report.COLUMNS}, sweep=sweep_name, point=point, seed=0,
                config=point, order=0, train_scale='37', protocol=protocol, flip=False,
                test_scales=scales, top1_error=0.2, top5_error=0.05, num_examples=10000,
                train_seconds=train, eval_seconds=evaluation)
  # D trained once in 600 s; its multi-crop pass (120 s) also made dense + multi-crop.
  d = [('single', '37', 5.0), ('dense', '32,37,42', 30.0), ('multicrop', '32,37,42', 120.0),
       ('dense+multicrop', '32,37,42', 120.0)]
  rows = ([row(sweep_name, 'D', protocol, scales, 600.0, seconds)
           for sweep_name in ('depth', 'conv1x1') for protocol, scales, seconds in d] +
          [row('depth', 'A', 'single', '37', 300.0, 4.0),
           row('conv1x1', 'C', 'single', '37', '', 6.0)])
  totals = report.compute_time(rows)
  assert list(totals) == ['depth', 'conv1x1', report.ALL_POINTS]
  assert totals['depth'] == {'points': 2, 'trained': 2, 'train_seconds': 900.0,
                             'eval_seconds': 159.0}
  assert totals['conv1x1'] == {'points': 2, 'trained': 1, 'train_seconds': 600.0,
                               'eval_seconds': 161.0}
  assert totals[report.ALL_POINTS] == {'points': 3, 'trained': 2, 'train_seconds': 900.0,
                                       'eval_seconds': 165.0}
  report.write_csv(rows, str(tmp_path / 'results.csv'))
  text = open(report.make_report(str(tmp_path), from_csv=True)).read()
  assert '| depth | 2 | 15 min | 3 min |' in text
  assert '| conv1x1 | 2 (1 timed) | 10 min | 3 min |' in text
  assert report._duration(3 * 3600 + 29 * 60 + 40) == '3 h 30 min'


def _claim_rows(sweep_name, config, protocol, errors, test_scales='37', train_scale='37'):
  return [{'sweep': sweep_name, 'config': config, 'protocol': protocol, 'seed': seed,
           'point': f'{config},S={train_scale},seed={seed}', 'train_scale': train_scale,
           'test_scale': '55' if train_scale == '[37,73]' else '37',
           'test_scales': test_scales, 'top1_error': error}
          for seed, error in enumerate(errors)]


def test_claims_decide_by_welch_and_paired_t_tests():
  rows = (_claim_rows('depth', 'A', 'dense', [0.30, 0.32, 0.31]) +
          _claim_rows('depth', 'D', 'dense', [0.20, 0.21, 0.22]) +
          _claim_rows('depth', 'E', 'dense', [0.215, 0.20, 0.22]) +
          # measured at another single scale too: not the config's own, not compared
          _claim_rows('depth', 'A', 'dense', [0.01, 0.01, 0.01], test_scales='32') +
          _claim_rows('lrn', 'A', 'dense', [0.30, 0.32, 0.31]) +
          _claim_rows('lrn', 'A-LRN', 'dense', [0.25, 0.26, 0.255]) +
          _claim_rows('conv1x1', 'C', 'dense', [0.22, 0.21, 0.20]) +
          _claim_rows('conv1x1', 'D', 'dense', [0.20, 0.23, 0.21]))
  verdicts = {v['claim']: v for v in claims.decide_all(rows)}
  depth = verdicts['depth helps, up to saturation']
  assert depth['verdict'] == claims.REPRODUCES
  d_vs_a = depth['comparisons'][0]
  assert d_vs_a['first'] == {'n': 3, 'mean': pytest.approx(0.21), 'std': pytest.approx(0.01)}
  from scipy import stats  # pylint: disable=g-import-not-at-top
  assert d_vs_a['p'] == pytest.approx(
      stats.ttest_ind([0.20, 0.21, 0.22], [0.30, 0.32, 0.31], equal_var=False).pvalue)
  # LRN significantly lower error: the paper's "no gain" is contradicted.
  assert verdicts['LRN does not help']['verdict'] == claims.DOES_NOT
  assert verdicts['3x3 beats 1x1 at equal depth']['verdict'] == claims.INCONCLUSIVE
  # Nothing measured: inconclusive, n < 2.
  jitter = verdicts['scale jitter helps, most with multi-scale testing']
  assert jitter['verdict'] == claims.INCONCLUSIVE and jitter['comparisons'][0]['p'] is None


def test_protocol_claims_pair_the_same_models():
  single = _claim_rows('depth', 'D', 'dense', [0.20, 0.30, 0.40])
  # Every model about 0.01 better at multiple scales: a paired test sees it,
  # Welch's would not (the models differ by far more).
  multi = _claim_rows('depth', 'D', 'dense', [0.19, 0.292, 0.388], test_scales='32,37,42')
  verdict = claims.decide(claims.CLAIMS[5], single + multi)
  assert verdict['verdict'] == claims.REPRODUCES
  assert verdict['comparisons'][0]['test'] == 'paired t'
  assert verdict['comparisons'][0]['difference'] == pytest.approx(-0.01)
