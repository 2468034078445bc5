"""The labeling stage: sample two responses per prompt (or take given pairs), label them with the
judge, and write the preference dataset that the reward-model stage reads.

Work goes in batches; each finished batch is written atomically as one JSONL chunk, so a crash loses
at most the batch in flight, and a restart skips finished chunks. Batches, principles and PRNG keys
depend only on the batch index, so a resumed run ends with the same dataset as an uninterrupted one.
At the end the chunks become a TFDS array_record dataset (`rlaif_jax.preference_dataset`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import numpy as np
from tqdm import tqdm

from rlaif_jax import judge as judge_lib
from rlaif_jax import preference_dataset, sampling


def _principles(constitution: Sequence[str] | None, seed: int, start: int, n: int) -> list[str | None]:
  if not constitution:
    return [None] * n
  return [constitution[int(np.random.default_rng([seed, start + i]).integers(len(constitution)))]
          for i in range(n)]


def label(judge: judge_lib.Judge, prompts: Sequence[str], workdir: str, key: jax.Array, *,
          pairs: Sequence[tuple[str, str]] | None = None, policy: sampling.TextGenerator | None = None,
          response_settings: sampling.SamplingConfig | None = None, batch_size: int = 8,
          constitution: Sequence[str] | None = None, seed: int = 0,
          cot: sampling.SamplingConfig | None = None, progress: bool = True) -> str:
  """Label every prompt; returns the TFDS dataset directory. pairs: given (response_a, response_b)
  per prompt; otherwise `policy` samples two responses per prompt with `response_settings`."""
  if pairs is None and policy is None:
    raise ValueError('label() needs either given response pairs or a policy to sample them from.')
  if pairs is not None and len(pairs) != len(prompts):
    raise ValueError(f'{len(prompts)} prompts but {len(pairs)} response pairs.')
  if not prompts:
    raise ValueError('No prompts to label; check the prompt dataset.')
  chunks = os.path.join(workdir, 'label_chunks')
  os.makedirs(chunks, exist_ok=True)
  n_batches = -(-len(prompts) // batch_size)
  bar = tqdm(total=len(prompts), desc='label', unit='pair', disable=not progress)
  for b in range(n_batches):
    path = os.path.join(chunks, f'{b:06d}.jsonl')
    lo, hi = b * batch_size, min((b + 1) * batch_size, len(prompts))
    if not os.path.exists(path):
      _write(path, _label_batch(judge, prompts, pairs, policy, response_settings, lo, hi,
                                jax.random.fold_in(key, b), constitution, seed, cot))
    bar.update(hi - lo)
  bar.close()
  return preference_dataset.build(chunks, os.path.join(workdir, 'preferences'))


def _label_batch(judge, prompts, pairs, policy, settings, lo, hi, key, constitution, seed, cot):
  batch = list(prompts[lo:hi])
  sample_key, cot_key = jax.random.split(key)
  if pairs is not None:
    a, b = [p[0] for p in pairs[lo:hi]], [p[1] for p in pairs[lo:hi]]
  else:
    settings = settings or sampling.SamplingConfig(64, temperature=1.0)
    both = policy(batch + batch, settings, sample_key)  # two independent samples per prompt
    a, b = both[:len(batch)], both[len(batch):]
  principles = _principles(constitution, seed, lo, len(batch))
  if cot is not None:
    pref, rationales = judge.pairwise_cot(batch, a, b, cot_key, cot, principles=principles)
  else:
    pref, rationales = judge.pairwise(batch, a, b, principles), [('', '')] * len(batch)
  rows = []
  for i in range(len(batch)):
    rows.append({
        'index': lo + i, 'prompt': batch[i], 'response_a': _text(a[i]), 'response_b': _text(b[i]),
        'p_a_better': float(pref.p_a_better[i]), 'p_ab': float(pref.p_ab[i]),
        'p_ba': float(np.nan_to_num(pref.p_ba[i], nan=-1.0)), 'consistent': bool(pref.consistent[i]),
        'skipped': bool(pref.skipped[i]), 'principle': principles[i] or '',
        'rationale_ab': rationales[i][0], 'rationale_ba': rationales[i][1], 'judge': judge.name})
  return rows


def _text(x: Any) -> str:
  return x if isinstance(x, str) else ''


def _write(path: str, rows: list[dict]) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')
  os.replace(tmp, path)
