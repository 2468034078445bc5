"""The label stage: two responses per training prompt from the policy (or the pairs of a human-labeled
file), soft labels from the judge (debiased pairwise, or pointwise with label.question), a human
source (label.human: that file's labels, or config.check standing in for annotators) or both
(label.source = judge | human | hybrid), written as the preference rows that the reward-model stage
reads.

Work goes in batches; each finished batch is written atomically as one JSONL chunk
(label/label_chunks/NNNNNN.jsonl, rows as in `feedback.labeling.ROW_FIELDS`), so a crash loses at most
the batch in flight and a restart skips finished chunks. Batches, principles and PRNG keys depend only
on the batch index, so a resumed run ends with the same rows as an uninterrupted one. label/DONE.json
is written last. Hybrid: after the chunks, the label.human_budget pairs the judge is least sure of get
human labels (label/human_labels.jsonl, which `labels` applies). label.review_size > 0 writes
label/review_queue.jsonl: the AI labels most in doubt with an empty "preference" for a person to fill
in ("a", "b", "tie" or P(A better)); the reward_model stage merges what they filled in.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from rlaif_jax.feedback import checks as checks_lib
from rlaif_jax.feedback import label_sources, labeling, validation
from rlaif_jax.feedback.judge import Judge
from rlaif_jax.generation import text as text_lib
from rlaif_jax.generation.sampler import SamplingConfig
from rlaif_jax.infra import metrics, storage
from rlaif_jax.infra.progress import Progress
from rlaif_jax.pipeline import training_loop
from rlaif_jax.pipeline.context import DONE, RunContext
from rlaif_jax.infra.errors import UserError

CHUNKS = 'label_chunks'
HUMAN = 'human_labels.jsonl'
QUEUE = 'review_queue.jsonl'


def label_prompts(judge: Judge | None, prompts: Sequence[str], folder: storage.PathLike, key: jax.Array, *,
                  pairs: Sequence[tuple[str, str]] | None = None,
                  policy: text_lib.TextGenerator | None = None,
                  response_settings: SamplingConfig | None = None, batch_size: int = 8,
                  constitution: Sequence[str] | None = None, seed: int = 0,
                  cot: SamplingConfig | None = None, question: str | None = None,
                  scale: float = 1.0, human: tuple[Callable, str] | None = None,
                  progress: bool = True) -> storage.epath.Path:
  """Label every prompt into `folder`/label_chunks; returns that directory. pairs: given
  (response_a, response_b) per prompt; otherwise `policy` samples two responses per prompt with
  `response_settings`. question / scale: pointwise judge labels (`labeling.label_batch`).
  human: (fn(prompts, A, B, start) -> P(A better), name) labels instead of the judge.
  Collective with several processes: all compute every batch, process 0 writes."""
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
      if human is not None:
        rows = labeling.human_rows(batch, a, r_b, human[0](batch, a, r_b, lo), lo, human[1])
      else:
        rows = labeling.label_batch(judge, batch, a, r_b, lo, cot_key, constitution=constitution,
                                    seed=seed, cot=cot, question=question, scale=scale)
      storage.write_jsonl(path, rows)
    if progress:
      bar.update(hi)
  return chunks


def read_labels(chunks: storage.PathLike) -> list[dict]:
  """Every preference row of a label_chunks directory, in prompt order."""
  rows = []
  for path in sorted(storage.path(chunks).glob('*.jsonl')):
    rows.extend({**r, 'source': r.get('source', 'judge')} for r in storage.read_jsonl(path))
  return sorted(rows, key=lambda r: r['index'])


def labels(folder: storage.PathLike) -> list[dict]:
  """The label stage's rows in `folder` (its label_chunks, with the hybrid's human labels in place)."""
  folder = storage.path(folder)
  rows = read_labels(folder / CHUNKS)
  if (folder / HUMAN).exists():
    human = {r['index']: r for r in storage.read_jsonl(folder / HUMAN)}
    rows = [human.get(r['index'], r) for r in rows]
  return rows


def reviewed(folder: storage.PathLike, rows: list[dict]) -> tuple[list[dict], int]:
  """`rows` with what a person filled in on `folder`/review_queue.jsonl; (rows, labels changed)."""
  path = storage.path(folder) / QUEUE
  if not path.exists():
    return rows, 0
  return label_sources.merge_review(rows, storage.read_jsonl(path), str(path))


def human_source(ctx: RunContext) -> tuple[Callable, str, list[label_sources.HumanPair] | None]:
  """(fn(prompts, A, B, start) -> P(A better), its name, the file's pairs or None) of label.human."""
  c = ctx.config.label
  if c.human == 'check':
    check = checks_lib.resolve(ctx.config.check)
    return (lambda p, a, b, start: label_sources.check_labels(check, p, a, b),
            f'check:{ctx.config.check} (standing in for human annotators)', None)
  with storage.path(c.human).open('r') as f:
    pairs = label_sources.parse_human_pairs(f.read().splitlines(), c.human)
  if c.num_prompts > 0:
    pairs = pairs[:c.num_prompts]
  return (lambda p, a, b, start: np.array([x.preference for x in pairs[start:start + len(p)]]),
          f'human:{c.human}', pairs)


def run_stage(ctx: RunContext) -> dict[str, Any]:
  if (info := training_loop.complete(ctx, 'label')) is not None:
    return info
  c = ctx.config.label
  t0 = time.time()
  human, name, given = human_source(ctx) if c.source in ('human', 'hybrid') else (None, '', None)
  generator, pairs = None, None
  if given is not None:
    prompts, pairs = [x.prompt for x in given], [(x.response_a, x.response_b) for x in given]
  else:
    policy, tokenizer = ctx.policy(frozen=True)
    generator = text_lib.TextGenerator(policy, tokenizer, ctx.mesh)
    train_prompts, _ = ctx.prompts()
    prompts = train_prompts[:c.num_prompts] if c.num_prompts > 0 else train_prompts
  judge = ctx.judge() if c.source != 'human' else None
  chunks = label_prompts(judge, prompts, ctx.path('label'), ctx.stage_key('label'), pairs=pairs,
                         policy=generator, response_settings=ctx.sampling(c.sampling),
                         batch_size=c.batch_size, constitution=ctx.constitution(),
                         seed=ctx.config.seed, question=c.question or None,
                         scale=c.pointwise_scale, human=(human, name) if c.source == 'human' else None)
  if c.source == 'hybrid':  # every process computes the same rows; write_jsonl is collective

    def ask(rs):
      if given is not None:
        return np.array([given[r['index']].preference for r in rs])
      return human([r['prompt'] for r in rs], [r['response_a'] for r in rs],
                   [r['response_b'] for r in rs], None)
    mixed = label_sources.hybrid(read_labels(chunks), c.human_budget, ask)
    storage.write_jsonl(ctx.path('label', HUMAN), (dict(r, judge=f'{r["judge"]} -> {name}')
                                                   for r in mixed if r['source'] == 'human'))
  rows = labels(ctx.path('label'))
  queue = ctx.path('label', QUEUE)
  if c.review_size > 0 and not queue.exists():  # never over a person's edits
    storage.write_jsonl(queue, label_sources.review_queue(rows, c.review_size))
  live = [r for r in rows if not r['skipped']]
  ai = [r for r in live if r['source'] == 'judge']
  info = {'labels': str(chunks), 'source': c.source, 'pairs': len(rows),
          'skipped': len(rows) - len(live), 'human_labels': len(live) - len(ai),
          'human_source': name, 'review_queue': str(queue) if c.review_size > 0 else '',
          # the judge's labels alone (none when label.source is human; pointwise has no order)
          'position_consistency': float(np.mean([r['consistent'] for r in ai]))
          if ai and not c.question else None,
          'mean_confidence': float(np.mean([abs(r['p_a_better'] - 0.5) * 2 for r in ai]))
          if ai else None}
  if ctx.config.check and live:  # the labels against the principle's check (its ties left out)
    check = checks_lib.resolve(ctx.config.check)
    a = validation.agreement([r['p_a_better'] for r in live], label_sources.check_labels(
        check, *zip(*((r['prompt'], r['response_a'], r['response_b']) for r in live))),
        seed=ctx.config.seed)
    info.update(check_agreement=a['agreement'], check_agreement_ci95=a['agreement_ci95'],
                check_pairs=a['pairs'])
  info['seconds'] = time.time() - t0
  writer = metrics.Writer(ctx.workdir, 'label')
  writer.write(len(rows), {k: v for k, v in info.items() if not isinstance(v, list)})
  writer.close()
  storage.write_json(ctx.path('label', DONE), info)
  return info
