"""glibc's malloc tuned for the buffers XLA's CPU runtime allocates every step.

Each execution takes its buffers from malloc: the width-1/4 VGG-D's step (batch 128,
32x32) 60 MB of temporaries in one block, above glibc's largest mmap threshold
(32 MB), so malloc maps it fresh from the kernel and unmaps it after, and the next
step pays the page faults again. Two tunables fix it:

* `glibc.malloc.hugetlb=1` makes malloc ask for transparent huge pages (madvise):
  6,000-12,000 faults of 4 KiB a step of VGG-A at batch 64 become a few hundred huge
  ones, +1-5 % at width 1 and +9-15 % on the width-1/4 net (experiments/PERFORMANCE.md,
  2026-12-04). Where glibc is 2.35 or newer and the kernel's THP mode is `madvise`
  (in `always` mode the kernel gives them already, in `never` nothing can). With freed
  memory kept (below) they still speed the bfloat16 width-1/2 step by a tenth; VGG-D at
  width 1/8 they slowed by a sixth one evening and sped by a fifth that night
  (2026-12-06), so they stay on for every model; `GLIBC_TUNABLES=glibc.malloc.hugetlb=0`
  turns them off.
* `glibc.malloc.mmap_max=0` and a 16 GiB `trim_threshold` keep freed memory in
  malloc's heap, so every step reuses the last one's pages: no page faults at all
  after the first step (240-330 a step of the width-1/4 net with huge pages alone),
  +12 % on that net's step in alternating runs, VGG-A at width 1 unchanged; a
  process's resident memory stays at its peak (the width-1/4 benchmark's 720 -> 870 MB;
  experiments/PERFORMANCE.md, 2026-12-05).

glibc reads its tunables only when a process starts, so the commands
(`vgg_jax.train`, `vgg_jax.evaluate`, `vgg_jax.benchmark`, `experiments.point`)
restart themselves once with them, before their heavy imports, on Linux with glibc.
`VGG_JAX_MALLOC_TUNABLES=0` turns it off; a tunable the user set stays as the user
set it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Mapping, Optional

from vgg_jax import env_vars

SWITCH_ENV = 'VGG_JAX_MALLOC_TUNABLES'
TUNABLES_ENV = 'GLIBC_TUNABLES'
HUGE_PAGES = 'glibc.malloc.hugetlb=1'
KEEP_FREED_MEMORY = ('glibc.malloc.mmap_max=0', f'glibc.malloc.trim_threshold={16 << 30}')
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


def _name(tunable: str) -> str:
  return tunable.split('=', 1)[0]


def tunables_to_restart_with(environ: Mapping[str, str], *, platform: str,
                             glibc: Optional[tuple[int, int]],
                             thp: Optional[str]) -> Optional[str]:
  """The GLIBC_TUNABLES to restart with, or None where a restart would change nothing."""
  # glibc has read malloc's tunables since 2.26, huge pages since 2.35.
  if (environ.get(SWITCH_ENV, '1') in ('0', '') or USERS_TUNABLES_ENV in environ
      or not platform.startswith('linux') or glibc is None or glibc < (2, 26)):
    return None
  ours = (HUGE_PAGES,) if glibc >= (2, 35) and thp == 'madvise' else ()
  users = environ.get(TUNABLES_ENV, '')
  users_names = {_name(tunable) for tunable in users.split(':')}
  added = [t for t in ours + KEEP_FREED_MEMORY if _name(t) not in users_names]
  if not added:
    return None
  return ':'.join([users, *added] if users else added)


def restart_with_tunables() -> None:
  """Re-executes this command (same interpreter, same arguments) with the tunables,
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
