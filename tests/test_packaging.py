"""What `pip install` puts on a user's path, and configs that load from anywhere (issue #13).

Only `vgg_jax` is installed: `configs` and `experiments` are generic names that
would shadow (or be shadowed by) a user's own top-level packages. They are
used from the checkout instead, so config files must load by path from any
working directory, as `python -m vgg_jax.train --config=/abs/path.py` does.
"""

import glob
import os
import subprocess
import sys
import tomllib

import setuptools

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_only_vgg_jax_is_installed():
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    find = tomllib.load(f)['tool']['setuptools']['packages']['find']
  # pyproject's `packages.find` searches namespace packages unless told not to.
  finder = (setuptools.find_namespace_packages if find.get('namespaces', True)
            else setuptools.find_packages)
  where = find.get('where', ['.'])
  packages = {p for w in where
              for p in finder(os.path.join(REPO, w), include=find.get('include', ('*',)),
                              exclude=find.get('exclude', ()))}
  library = {os.path.relpath(os.path.dirname(init), REPO).replace(os.sep, '.')
             for init in glob.glob(os.path.join(REPO, 'vgg_jax', '**', '__init__.py'),
                                   recursive=True)}
  assert 'vgg_jax.data' in library
  assert packages == library


# Loads three config files by path, as vgg_jax.train (ml_collections) and
# experiments.sweep (vgg_jax.config_schema) do, from a directory outside the
# checkout, and checks that the checkout did not end up on sys.path: configs
# import only `vgg_jax`, and a sweep file loads the config it builds on by path.
LOAD_CONFIGS = '''
import os, sys
from absl import flags
from ml_collections import config_flags
from vgg_jax import config_schema

repo = sys.argv[1]
assert os.getcwd() != repo and repo not in sys.path
cifar10 = config_schema.load_config_module(f'{repo}/configs/cifar10.py')
config = cifar10.get_config('D,runlocal')
assert config.data.name == 'cifar10' and config.model.variant == 'D', config

depth = config_schema.load_config_module(f'{repo}/configs/sweeps/depth.py')
assert depth.get_config('runlocal').model.width == 0.125 and depth.get_sweep('runlocal')

flag = config_flags.DEFINE_config_file('config')
flags.FLAGS([sys.argv[0], f'--config={repo}/configs/default.py'])
assert flag.value.data.name == 'vgg_shapes'
assert repo not in sys.path and 'configs' not in sys.modules, sys.path
print('loaded without the checkout on sys.path')
'''


def test_config_files_load_by_path_from_another_directory(tmp_path):
  # No PYTHONPATH to the checkout: only this checkout's vgg_jax, as `pip
  # install -e .` would put it, through a directory that holds nothing else.
  installed = tmp_path / 'site-packages'
  installed.mkdir()
  (installed / 'vgg_jax').symlink_to(os.path.join(REPO, 'vgg_jax'))
  env = {**os.environ, 'PYTHONPATH': str(installed)}
  proc = subprocess.run([sys.executable, '-c', LOAD_CONFIGS, REPO], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'loaded without the checkout on sys.path' in proc.stdout
