"""The paper's seven claims, each decided from the sweeps' rows (experiments.report).

A claim is a list of comparisons of top-1 test error, each between two groups
of measurements, with what the paper expects of it:

  'lower'      the first group's error is lower (e.g. D against A);
  'not lower'  the first group's error is not lower (no gain: LRN, depth past 16).

Two configurations are compared over seeds, independent trainings, with
Welch's t-test; two test protocols on the same trained models with a paired
t-test over the models. Both two-sided at ALPHA = 0.05. A comparison is

  met           'lower' and significantly lower, or 'not lower' and not
                significantly lower;
  contradicted  significant the other way ('lower' but significantly higher,
                'not lower' but significantly lower);
  open          otherwise, or with fewer than 2 measurements on a side.

A claim reproduces when all its comparisons are met, does not when one is
contradicted, and is inconclusive otherwise. With 3 seeds only large effects
are significant, so a small true effect reads as inconclusive, and 'not
lower' can be met by a test too weak to see a gain: read the numbers beside
the verdict.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

ALPHA = 0.05
REPRODUCES, DOES_NOT, INCONCLUSIVE = 'reproduces', 'does not', 'inconclusive'

Rows = Sequence[dict]


@dataclasses.dataclass(frozen=True)
class Comparison:
  label: str
  first: Callable[[Rows], dict]   # rows -> {key: error}; keys pair the two sides
  second: Callable[[Rows], dict]
  expect: str                     # 'lower' or 'not lower'
  paired: bool = False            # same models under two protocols


@dataclasses.dataclass(frozen=True)
class Claim:
  text: str
  paper: str
  comparisons: tuple[Comparison, ...]


# --------------------------------------------------------------------------
# Selecting measurements from the report's rows.
# --------------------------------------------------------------------------


def _multi(row: dict) -> bool:
  return ',' in row['test_scales']


def errors(sweep: str, config: str, protocol: str, *, multi_scale: bool,
           train_scale: Optional[str] = None) -> Callable[[Rows], dict]:
  """{seed: top-1 error} of one configuration of one sweep, one protocol, at its
  single test scale (Q = S, or Q = 55 for jittered S) or at its 'auto' scales."""
  def select(rows: Rows) -> dict:
    return {r['seed']: r['top1_error'] for r in rows
            if r['sweep'] == sweep and r['config'] == config and r['protocol'] == protocol
            and _multi(r) == multi_scale and _at_test_scale(r, multi_scale)
            and (train_scale is None or r['train_scale'] == train_scale)}
  return select


def _at_test_scale(row: dict, multi_scale: bool) -> bool:
  # Some points are also measured at other single scales (the scale sweep's
  # 'single:Q'); a comparison uses the config's own test scale. Rows of an
  # older CSV do not name it.
  return (multi_scale or row.get('test_scale') in (None, '')
          or row['test_scales'] == str(row['test_scale']))


def multi_scale_gain(sweep: str, config: str, train_scale: str) -> Callable[[Rows], dict]:
  """{seed: dense multi-scale error - dense single-scale error}, per trained model."""
  def select(rows: Rows) -> dict:
    single = errors(sweep, config, 'dense', multi_scale=False, train_scale=train_scale)(rows)
    multi = errors(sweep, config, 'dense', multi_scale=True, train_scale=train_scale)(rows)
    return {s: multi[s] - single[s] for s in single.keys() & multi.keys()}
  return select


def every_model(protocol: str, *, multi_scale: bool) -> Callable[[Rows], dict]:
  """{point: top-1 error} over every trained point (each once, whatever its sweeps)."""
  def select(rows: Rows) -> dict:
    return {r['point']: r['top1_error'] for r in rows
            if r['protocol'] == protocol and _multi(r) == multi_scale
            and _at_test_scale(r, multi_scale)}
  return select


# --------------------------------------------------------------------------
# The claims (§4.1-4.3; ImageNet numbers: top-1 error, dense evaluation).
# --------------------------------------------------------------------------


def _dense(sweep, config, **kw):
  return errors(sweep, config, 'dense', multi_scale=False, **kw)


CLAIMS = (
    Claim('depth helps, up to saturation', 'Table 3: A 29.6, B 28.7, D 27.0, E 27.3',
          (Comparison('D against A (dense, Q = S)', _dense('depth', 'D'), _dense('depth', 'A'),
                      'lower'),
           Comparison('E against D (dense, Q = S)', _dense('depth', 'E'), _dense('depth', 'D'),
                      'not lower'))),
    Claim('LRN does not help', 'Table 3: A-LRN 29.7, A 29.6',
          (Comparison('A-LRN against A (dense, Q = S)', _dense('lrn', 'A-LRN'),
                      _dense('lrn', 'A'), 'not lower'),)),
    Claim('3x3 beats 1x1 at equal depth', 'Table 3: D 27.0, C 28.1 (S = 256)',
          (Comparison('D against C (dense, Q = S)', _dense('conv1x1', 'D'),
                      _dense('conv1x1', 'C'), 'lower'),)),
    Claim('a pair of 3x3 beats one 5x5', '§4.1: B with 5x5 convs 7 % higher top-1 (centre crop)',
          (Comparison('B against B 5x5 (centre crop)',
                      errors('kernel_size', 'B', 'single', multi_scale=False),
                      errors('kernel_size', 'B depths 1-1-1-1-1 5x5', 'single',
                             multi_scale=False), 'lower'),)),
    Claim('scale jitter helps, most with multi-scale testing',
          'Tables 3-4, D: S = 256 27.0 / 26.6, S = 384 26.8 / 26.5, jittered 25.6 / 24.8 '
          '(single / multi-scale)',
          (Comparison('jittered against fixed S = 37 (dense, Q = S)',
                      _dense('scale_jitter', 'D', train_scale='[37,73]'),
                      _dense('scale_jitter', 'D', train_scale='37'), 'lower'),
           Comparison('jittered against fixed S = 55 (dense, Q = S)',
                      _dense('scale_jitter', 'D', train_scale='[37,73]'),
                      _dense('scale_jitter', 'D', train_scale='55'), 'lower'),
           Comparison('jittered against fixed S = 37 (dense, multi-scale)',
                      errors('scale_jitter', 'D', 'dense', multi_scale=True,
                             train_scale='[37,73]'),
                      errors('scale_jitter', 'D', 'dense', multi_scale=True, train_scale='37'),
                      'lower'),
           Comparison('jittered against fixed S = 55 (dense, multi-scale)',
                      errors('scale_jitter', 'D', 'dense', multi_scale=True,
                             train_scale='[37,73]'),
                      errors('scale_jitter', 'D', 'dense', multi_scale=True, train_scale='55'),
                      'lower'),
           Comparison('multi-scale gain (multi - single), jittered against fixed',
                      multi_scale_gain('scale_jitter', 'D', '[37,73]'),
                      multi_scale_gain('scale_jitter', 'D', '37'), 'lower'))),
    Claim('multi-scale testing beats single-scale', 'Table 4 against Table 3, every config',
          (Comparison('dense multi-scale against dense Q = S, every model',
                      every_model('dense', multi_scale=True),
                      every_model('dense', multi_scale=False), 'lower', paired=True),)),
    Claim('dense + multi-crop beats either', 'Table 5, D: dense 24.8, multi-crop 24.6, both 24.4',
          (Comparison('dense + multi-crop against dense (multi-scale)',
                      every_model('dense+multicrop', multi_scale=True),
                      every_model('dense', multi_scale=True),
                      'lower', paired=True),
           Comparison('dense + multi-crop against multi-crop (multi-scale)',
                      every_model('dense+multicrop', multi_scale=True),
                      every_model('multicrop', multi_scale=True), 'lower', paired=True))),
)


# --------------------------------------------------------------------------
# Tests and verdicts.
# --------------------------------------------------------------------------


def test(comparison: Comparison, rows: Rows) -> dict:
  """The comparison's numbers: means, stds, n, the difference, p and its outcome."""
  first, second = comparison.first(rows), comparison.second(rows)
  if comparison.paired:
    keys = sorted(first.keys() & second.keys())
    first, second = {k: first[k] for k in keys}, {k: second[k] for k in keys}
  a, b = list(first.values()), list(second.values())
  result = {'label': comparison.label, 'expect': comparison.expect,
            'test': 'paired t' if comparison.paired else "Welch's t",
            'first': _summary(a), 'second': _summary(b), 'p': None, 'outcome': 'open'}
  if len(a) < 2 or len(b) < 2:
    return result
  result['difference'] = sum(a) / len(a) - sum(b) / len(b)
  from scipy import stats  # pylint: disable=g-import-not-at-top  (seconds to import)
  if comparison.paired:
    p = stats.ttest_rel(a, b).pvalue
  else:
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
  p = 1.0 if math.isnan(p) else float(p)  # identical samples: no difference at all
  result['p'] = p
  lower, higher = p < ALPHA and result['difference'] < 0, p < ALPHA and result['difference'] > 0
  if comparison.expect == 'lower':
    result['outcome'] = 'met' if lower else 'contradicted' if higher else 'open'
  else:
    result['outcome'] = 'contradicted' if lower else 'met'
  return result


def mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
  """Mean and sample standard deviation (None for a single value)."""
  n = len(values)
  mean = sum(values) / n
  if n < 2:
    return mean, None
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _summary(values: Sequence[float]) -> dict:
  if not values:
    return {'n': 0}
  mean, std = mean_std(values)
  return {'n': len(values), 'mean': mean, 'std': std}


def decide(claim: Claim, rows: Rows) -> dict:
  results = [test(c, rows) for c in claim.comparisons]
  outcomes = {r['outcome'] for r in results}
  verdict = (DOES_NOT if 'contradicted' in outcomes else
             REPRODUCES if outcomes == {'met'} else INCONCLUSIVE)
  return {'claim': claim.text, 'paper': claim.paper, 'comparisons': results,
          'verdict': verdict}


def decide_all(rows: Rows) -> list[dict]:
  return [decide(claim, rows) for claim in CLAIMS]
