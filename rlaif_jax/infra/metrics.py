"""Metrics to `metrics.jsonl` and TensorBoard event files in the workdir.

One JSON object per line: {"stage": ..., "step": ..., <name>: <float>, ...}. TensorBoard scalars are
`<stage>/<name>` under `<workdir>/tensorboard`. A stage that resumes from a checkpoint at step s first
drops its rows after s (they are written again, identically, by the resumed run), so the file of a
run that was killed and restarted equals that of an uninterrupted run; TensorBoard purges those
steps the same way. Only process 0 writes. With a workdir in a bucket the event files are written
locally and copied there when the stage's writer closes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

from rlaif_jax.infra import distributed, storage

FILE = 'metrics.jsonl'


def read(workdir: storage.PathLike, stage: str | None = None) -> list[dict]:
  path = storage.path(workdir) / FILE
  rows = storage.read_jsonl(path) if path.exists() else []
  return [r for r in rows if stage is None or r['stage'] == stage]


class Writer:
  """Appends one stage's metrics; `resume_step` drops that stage's rows after it first. Collective
  to open and close (every process calls them); only process 0 writes. In a bucket, where objects
  cannot be appended to, the file is rewritten at each row (it is small)."""

  def __init__(self, workdir: storage.PathLike, stage: str, resume_step: int | None = None):
    workdir = storage.path(workdir)
    self.stage, self.path = stage, workdir / FILE
    self.active = distributed.is_writer()
    self.tb = None
    self.rows = read(workdir) if storage.is_url(workdir) else None
    if resume_step is not None and self.path.exists():
      keep = [r for r in read(workdir) if r['stage'] != stage or r['step'] <= resume_step]
      storage.write_jsonl(self.path, keep)
      self.rows = keep if self.rows is not None else None
    if not self.active:
      return
    from tensorboardX import SummaryWriter  # pure Python event files, no TensorFlow
    self.tb_dir = workdir / 'tensorboard' / stage
    # event files are written locally; in a bucket they are copied there when the stage closes
    self.tb_local = tempfile.mkdtemp(prefix='rlaif_jax_tb_') if storage.is_url(workdir) else None
    self.tb = SummaryWriter(self.tb_local or str(self.tb_dir),
                            purge_step=None if resume_step is None else resume_step + 1)

  def write(self, step: int, metrics: dict) -> None:
    if not self.active:
      return
    row = {'stage': self.stage, 'step': int(step)}
    row.update({k: _plain(v) for k, v in metrics.items()})
    if self.rows is None:
      with self.path.open('a') as f:
        f.write(json.dumps(row) + '\n')
    else:
      self.rows.append(row)
      self.path.write_text(''.join(json.dumps(r) + '\n' for r in self.rows))
    for k, v in row.items():
      if isinstance(v, float) and k != 'step':
        self.tb.add_scalar(f'{self.stage}/{k}', v, step)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
      if self.tb_local is not None:
        for name in sorted(os.listdir(self.tb_local)):
          local = storage.path(os.path.join(self.tb_local, name))
          storage.put_bytes(self.tb_dir / name, local.read_bytes())
        shutil.rmtree(self.tb_local, ignore_errors=True)
    distributed.barrier(f'metrics {self.stage}')  # rows written are there for every reader


def _plain(v):
  v = v.item() if hasattr(v, 'item') else v
  if isinstance(v, (bool, str)) or v is None:
    return v
  v = float(v)
  return v if math.isfinite(v) else str(v)  # JSON has no NaN; keep it visible as a string
