"""Progress lines for long work: `[stage] step i/n  rate/s  ETA`, plus chosen metrics, printed by
process 0 at most every `every` seconds (and at the end). The one progress display of the package."""

from __future__ import annotations

import math
import time

import jax


class Progress:
  """A progress line every `every` seconds: `[stage] step i/n  rate/s  ETA`, plus chosen metrics."""

  def __init__(self, stage: str, total: int, start: int = 0, unit: str = 'step', every: float = 10.0):
    self.stage, self.total, self.start, self.unit, self.every = stage, total, start, unit, every
    self.t0 = self.last = time.time()

  def update(self, done: int, metrics: dict | None = None, force: bool = False) -> None:
    now = time.time()
    if not force and now - self.last < self.every and done < self.total:
      return
    self.last = now
    rate = (done - self.start) / max(now - self.t0, 1e-9)
    eta = (self.total - done) / rate if rate > 0 else float('inf')
    shown = ''.join(f'  {k} {v:.4g}' for k, v in (metrics or {}).items()
                    if isinstance(v, (int, float)))
    if jax.process_index() == 0:
      print(f'[{self.stage}] {self.unit} {done}/{self.total}  {rate:.3g} {self.unit}/s  '
            f'ETA {_clock(eta)}{shown}', flush=True)


def _clock(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'
