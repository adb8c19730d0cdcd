"""The code's structure (issue #13): libraries define no flags, imports go one way.

Each check runs where it cannot be fooled by what the test process has
already imported: in a fresh Python process, or on the source text itself.
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Imports every module of vgg_jax and experiments after absl and ml_collections'
# own flag-defining modules; prints each flag that appeared and the module
# absl says defined it.
IMPORT_EVERYTHING = '''
import importlib, pkgutil
import absl.app, absl.logging
from absl import flags
from ml_collections import config_flags
import experiments, vgg_jax

before = set(flags.FLAGS)
for package in (vgg_jax, experiments):
  for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):
    importlib.import_module(module.name)
for name in sorted(set(flags.FLAGS) - before):
  print(name, flags.FLAGS.find_module_defining_flag(name))
'''


def test_importing_any_module_of_the_project_defines_no_flag():
  """Flags belong to the command lines' entry points: a library (or a module a
  test or another command imports) that defines them clashes with the flags of
  whoever imports it. TensorFlow, which some modules import, defines flags of
  its own; only those defined by the project's modules count."""
  proc = subprocess.run([sys.executable, '-c', IMPORT_EVERYTHING], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  defined = dict(line.split() for line in proc.stdout.splitlines())
  own = {name: module for name, module in defined.items()
         if module.split('.')[0] in ('vgg_jax', 'experiments', '__main__')}
  assert not own, f'flags defined on import: {own}'
