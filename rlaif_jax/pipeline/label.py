"""The label stage: two responses per training prompt from the policy, soft labels from the debiased
judge, written as the preference rows that the reward-model stage reads.

Work goes in batches; each finished batch is written atomically as one JSONL chunk
(label/label_chunks/NNNNNN.jsonl, rows as in `feedback.labeling.ROW_FIELDS`), so a crash loses at most
the batch in flight and a restart skips finished chunks. Batches, principles and PRNG keys depend only
on the batch index, so a resumed run ends with the same rows as an uninterrupted one. label/DONE.json
is written last.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import numpy as np

from rlaif_jax.feedback import labeling
from rlaif_jax.feedback.judge import Judge
from rlaif_jax.generation import text as text_lib
from rlaif_jax.generation.sampler import SamplingConfig
from rlaif_jax.infra import metrics, storage
from rlaif_jax.infra.progress import Progress
from rlaif_jax.pipeline import training_loop
from rlaif_jax.pipeline.context import DONE, RunContext
from rlaif_jax.infra.errors import UserError

CHUNKS = 'label_chunks'


def label_prompts(judge: Judge, prompts: Sequence[str], folder: storage.PathLike, key: jax.Array, *,
                  pairs: Sequence[tuple[str, str]] | None = None,
                  policy: text_lib.TextGenerator | None = None,
                  response_settings: SamplingConfig | None = None, batch_size: int = 8,
                  constitution: Sequence[str] | None = None, seed: int = 0,
                  cot: SamplingConfig | None = None, progress: bool = True) -> storage.epath.Path:
  """Label every prompt into `folder`/label_chunks; returns that directory. pairs: given
  (response_a, response_b) per prompt; otherwise `policy` samples two responses per prompt with
  `response_settings`. Collective with several processes: all compute every batch, process 0 writes."""
  if pairs is None and policy is None:
    raise ValueError('Labeling needs either given response pairs or a policy to sample them from.')
  if pairs is not None and len(pairs) != len(prompts):
    raise ValueError(f'{len(prompts)} prompts but {len(pairs)} response pairs.')
  if not prompts:
    raise UserError('No prompts to label; check the prompt dataset.')
  chunks = storage.makedirs(storage.path(folder) / CHUNKS)
  settings = response_settings or SamplingConfig(64, temperature=1.0)
  bar = Progress('label', len(prompts), unit='pair')
  for b in range(-(-len(prompts) // batch_size)):
    path = chunks / f'{b:06d}.jsonl'
    lo, hi = b * batch_size, min((b + 1) * batch_size, len(prompts))
    if not path.exists():
      sample_key, cot_key = jax.random.split(jax.random.fold_in(key, b))
      batch = list(prompts[lo:hi])
      if pairs is not None:
        a, r_b = [p[0] for p in pairs[lo:hi]], [p[1] for p in pairs[lo:hi]]
      else:
        a, r_b = labeling.response_pairs(policy, batch, settings, sample_key)
      storage.write_jsonl(path, labeling.label_batch(judge, batch, a, r_b, lo, cot_key,
                                             constitution=constitution, seed=seed, cot=cot))
    if progress:
      bar.update(hi)
  return chunks


def read_labels(chunks: storage.PathLike) -> list[dict]:
  """Every preference row of a label_chunks directory, in prompt order."""
  rows = []
  for path in sorted(storage.path(chunks).glob('*.jsonl')):
    rows.extend(storage.read_jsonl(path))
  return sorted(rows, key=lambda r: r['index'])


def run_stage(ctx: RunContext) -> dict[str, Any]:
  if (info := training_loop.complete(ctx, 'label')) is not None:
    return info
  c = ctx.config.label
  policy, tokenizer = ctx.policy(frozen=True)
  generator = text_lib.TextGenerator(policy, tokenizer, ctx.mesh)
  train_prompts, _ = ctx.prompts()
  prompts = train_prompts[:c.num_prompts] if c.num_prompts > 0 else train_prompts
  judge = ctx.judge()
  t0 = time.time()
  chunks = label_prompts(judge, prompts, ctx.path('label'), ctx.stage_key('label'), policy=generator,
                         response_settings=ctx.sampling(c.sampling), batch_size=c.batch_size,
                         constitution=ctx.constitution(), seed=ctx.config.seed)
  rows = read_labels(chunks)
  live = [r for r in rows if not r['skipped']]
  info = {'labels': str(chunks), 'pairs': len(rows), 'skipped': len(rows) - len(live),
          'position_consistency': float(np.mean([r['consistent'] for r in live])) if live else 0.0,
          'mean_confidence': float(np.mean([abs(r['p_a_better'] - 0.5) * 2 for r in live]))
          if live else 0.0, 'seconds': time.time() - t0}
  writer = metrics.Writer(ctx.workdir, 'label')
  writer.write(len(rows), info)
  writer.close()
  storage.write_json(ctx.path('label', DONE), info)
  return info
