"""Transparent huge pages for the buffers XLA's CPU runtime allocates every step.

Each execution takes its buffers from malloc, which maps the large ones fresh from
the kernel: 6,000-12,000 page faults of 4 KiB in every step of VGG-A at batch 64.
glibc's tunable `glibc.malloc.hugetlb=1` makes malloc ask for transparent huge
pages (madvise), and most of the faults go: the step gains 1-5 % at width 1 and
9-15 % on the width-1/4 net (experiments/PERFORMANCE.md, 2026-12-04). glibc reads
its tunables only when a process starts, so the commands (`vgg_jax.train`,
`vgg_jax.evaluate`, `vgg_jax.benchmark`, `experiments.point`) restart themselves
once with it, before their heavy imports, where it matters: Linux with glibc 2.35
or newer and transparent huge pages in `madvise` mode (in `always` mode the kernel
already gives them, in `never` nothing can). `VGG_JAX_HUGE_PAGES=0` turns it off;
a `glibc.malloc.hugetlb` of the user's own is left as it is.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Mapping, Optional

from vgg_jax import env_vars

SWITCH_ENV = 'VGG_JAX_HUGE_PAGES'
TUNABLES_ENV = 'GLIBC_TUNABLES'
TUNABLE = 'glibc.malloc.hugetlb=1'
# Set by the restart to the user's GLIBC_TUNABLES ('' for none): it marks the
# restarted process (no second restart) and gives other programs' processes
# (PyTorch's, in the benchmark) the environment the user chose.
USERS_TUNABLES_ENV = 'VGG_JAX_USERS_GLIBC_TUNABLES'
_THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def glibc_version() -> Optional[tuple[int, int]]:
  """(major, minor) of the C library if it is glibc, else None."""
  try:
    name = os.confstr('CS_GNU_LIBC_VERSION')  # e.g. 'glibc 2.36'
  except (AttributeError, ValueError, OSError):
    return None
  match = re.fullmatch(r'glibc (\d+)\.(\d+).*', name or '')
  return (int(match[1]), int(match[2])) if match else None


def thp_mode() -> Optional[str]:
  """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), or None."""
  try:
    with open(_THP_MODE_FILE) as f:
      match = re.search(r'\[(\w+)\]', f.read())
  except OSError:
    return None
  return match[1] if match else None


def tunables_to_restart_with(environ: Mapping[str, str], *, platform: str,
                             glibc: Optional[tuple[int, int]],
                             thp: Optional[str]) -> Optional[str]:
  """The GLIBC_TUNABLES to restart with, or None where a restart would change nothing."""
  if (environ.get(SWITCH_ENV, '1') in ('0', '') or USERS_TUNABLES_ENV in environ
      or not platform.startswith('linux') or glibc is None or glibc < (2, 35)
      or thp != 'madvise'):
    return None
  users = environ.get(TUNABLES_ENV, '')
  if 'glibc.malloc.hugetlb' in users:
    return None
  return f'{users}:{TUNABLE}' if users else TUNABLE


def restart_with_huge_pages() -> None:
  """Re-executes this command (same interpreter, same arguments) with the tunable,
  where `tunables_to_restart_with` says so; else returns."""
  tunables = tunables_to_restart_with(os.environ, platform=sys.platform,
                                      glibc=glibc_version(), thp=thp_mode())
  if tunables is None:
    return
  env = dict(os.environ)
  env[USERS_TUNABLES_ENV] = env.get(TUNABLES_ENV, '')
  env[TUNABLES_ENV] = tunables
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def users_tunables() -> Optional[str]:
  """GLIBC_TUNABLES as the user set it (before a restart), or None."""
  return os.environ.get(USERS_TUNABLES_ENV, os.environ.get(TUNABLES_ENV)) or None


def users_environment():
  """`os.environ` with GLIBC_TUNABLES as the user set it, for the processes started
  inside (another program's, compared as it runs by default)."""
  if USERS_TUNABLES_ENV not in os.environ:
    return contextlib.nullcontext()
  return env_vars.set_to(TUNABLES_ENV, users_tunables())
