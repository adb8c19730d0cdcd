"""What machine a run ran on, for the records beside its times.

A bfloat16 VGG-D trains nearly three times as fast on a 2-core AMD EPYC with
AVX-512 BF16 as on one with AVX2 only (637 against 223 img/s end to end;
experiments/PERFORMANCE.md, 2026-12-07), so a training time means little
without the CPU's model and instruction sets.
"""

from __future__ import annotations

import os

# The instruction sets that decide this project's speed on a CPU: XLA's and
# oneDNN's vector width, and bfloat16 multiplied in hardware or emulated.
ISA_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512bw', 'avx512_vnni', 'avx512_bf16',
             'avx512_fp16', 'amx_bf16')
CPUINFO = '/proc/cpuinfo'


def cpu_fields(text: str | None = None) -> dict[str, str]:
  """The first processor's fields in Linux's /proc/cpuinfo (or `text` in its
  format); empty where there is none."""
  if text is None:
    try:
      with open(CPUINFO) as f:
        text = f.read()
    except OSError:
      return {}
  fields = {}
  for line in text.splitlines():
    if not line.strip():
      if fields:
        break  # the next processor's block repeats the first's
      continue
    key, _, value = line.partition(':')
    fields.setdefault(key.strip(), value.strip())
  return fields


def describe(fields: dict[str, str] | None = None) -> dict:
  """The CPU as `lscpu` names it (model name, family, model number), the
  `ISA_FLAGS` it has, and the cores this process may use."""
  fields = cpu_fields() if fields is None else fields
  flags = set(fields.get('flags', '').split())
  number = lambda key: int(fields[key]) if fields.get(key, '').isdigit() else None
  return {'cpu': fields.get('model name'), 'cpu_family': number('cpu family'),
          'cpu_model': number('model'), 'isa': [f for f in ISA_FLAGS if f in flags],
          'cpu_cores': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                       else os.cpu_count()}


def label(described: dict) -> str:
  """A short name for tables: the CPU, its model number, and the widest of the
  instruction sets that set this project's speed."""
  isa = set(described.get('isa') or ())
  widest = next((name for flag, name in (('amx_bf16', 'AMX'), ('avx512_bf16', 'AVX-512 BF16'),
                                         ('avx512f', 'AVX-512'), ('avx2', 'AVX2'))
                 if flag in isa), 'no AVX2')
  model = described.get('cpu_model')
  cpu = described.get('cpu') or 'unknown CPU'
  return f'{cpu} (model {model}), {widest}' if model is not None else f'{cpu}, {widest}'
