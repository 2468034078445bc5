"""Metrics to `metrics.jsonl` and TensorBoard event files in the workdir.

One JSON object per line: {"stage": ..., "step": ..., <name>: <float>, ...}. TensorBoard scalars are
`<stage>/<name>` under `<workdir>/tensorboard`. A stage that resumes from a checkpoint at step s first
drops its rows after s (they are written again, identically, by the resumed run), so the file of a
run that was killed and restarted equals that of an uninterrupted run; TensorBoard purges those
steps the same way. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os

import jax

FILE = 'metrics.jsonl'


def read(workdir: str, stage: str | None = None) -> list[dict]:
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if stage is None or r['stage'] == stage]


class Writer:
  """Appends one stage's metrics; `resume_step` drops that stage's rows after it first."""

  def __init__(self, workdir: str, stage: str, resume_step: int | None = None):
    self.stage, self.path = stage, os.path.join(workdir, FILE)
    self.active = jax.process_index() == 0
    self.tb = None
    if not self.active:
      return
    if resume_step is not None and os.path.exists(self.path):
      keep = [r for r in read(workdir) if r['stage'] != stage or r['step'] <= resume_step]
      tmp = self.path + '.tmp'
      with open(tmp, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in keep)
      os.replace(tmp, self.path)
    from tensorboardX import SummaryWriter  # pure Python event files, no TensorFlow
    self.tb = SummaryWriter(os.path.join(workdir, 'tensorboard', stage),
                            purge_step=None if resume_step is None else resume_step + 1)

  def write(self, step: int, metrics: dict) -> None:
    if not self.active:
      return
    row = {'stage': self.stage, 'step': int(step)}
    row.update({k: _plain(v) for k, v in metrics.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    for k, v in row.items():
      if isinstance(v, float) and k != 'step':
        self.tb.add_scalar(f'{self.stage}/{k}', v, step)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def _plain(v):
  v = v.item() if hasattr(v, 'item') else v
  if isinstance(v, (bool, str)) or v is None:
    return v
  v = float(v)
  return v if math.isfinite(v) else str(v)  # JSON has no NaN; keep it visible as a string
