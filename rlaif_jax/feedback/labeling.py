"""Labeling one batch: two responses per prompt (sampled from the policy, or given), a principle per
comparison, and the judge's soft label (plain or chain-of-thought), as one preference row per prompt.

The principle and the PRNG key of a batch depend only on its position in the prompt list, so batches
can be labeled in any order, or again after a crash, with the same result. Writing the rows is the
pipeline's label stage.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from rlaif_jax.feedback.constitution import principles_for
from rlaif_jax.feedback.judge import Judge
from rlaif_jax.generation import text as text_lib
from rlaif_jax.generation.sampler import SamplingConfig

# What a preference row holds (the reward-model stage reads response_a / response_b / p_a_better).
# source: 'judge', 'human' (a human label or a check standing in for one) or 'review' (a person's
# correction of the judge's label; see feedback/label_sources.py).
ROW_FIELDS = ('index', 'prompt', 'response_a', 'response_b', 'p_a_better', 'p_ab', 'p_ba',
              'consistent', 'skipped', 'principle', 'rationale_ab', 'rationale_ba', 'judge',
              'source')


def response_pairs(policy: text_lib.TextGenerator, prompts: Sequence[str], settings: SamplingConfig,
                   key: jax.Array) -> tuple[list[str], list[str]]:
  """Two independent samples per prompt, in one batch: (responses A, responses B)."""
  both = policy(list(prompts) + list(prompts), settings, key)
  return both[:len(prompts)], both[len(prompts):]


def label_batch(judge: Judge, prompts: Sequence[str], responses_a: Sequence[Any],
                responses_b: Sequence[Any], start: int, key: jax.Array, *,
                constitution: Sequence[str] | None = None, seed: int = 0,
                cot: SamplingConfig | None = None, question: str | None = None,
                scale: float = 1.0) -> list[dict]:
  """Preference rows (`ROW_FIELDS`) for prompts start .. start + len(prompts) - 1 of a dataset.
  cot: sampling settings of the rationales for chain-of-thought labels (None: plain labels).
  question: pointwise labels instead of the pairwise comparison: the judge's yes/no `question`
  scored on each response alone (log P(Yes) - log P(No), in p_ab / p_ba: A's and B's scores),
  P(A better) = sigmoid((score A - score B) / scale); no order to be inconsistent about."""
  if question:
    sa, skip_a = judge.yes_no(prompts, responses_a, question)
    sb, skip_b = judge.yes_no(prompts, responses_b, question)
    p = 1.0 / (1.0 + np.exp(-(sa.astype(np.float64) - sb) / scale))
    return [{'index': start + i, 'prompt': prompts[i], 'response_a': _text(responses_a[i]),
             'response_b': _text(responses_b[i]), 'p_a_better': float(p[i]), 'p_ab': float(sa[i]),
             'p_ba': float(sb[i]), 'consistent': True, 'skipped': bool(skip_a[i] or skip_b[i]),
             'principle': question, 'rationale_ab': '', 'rationale_ba': '', 'judge': judge.name,
             'source': 'judge'} for i in range(len(prompts))]
  principles = principles_for(constitution, seed, start, len(prompts))
  if cot is not None:
    pref, rationales = judge.pairwise_cot(prompts, responses_a, responses_b, key, cot,
                                          principles=principles)
  else:
    pref = judge.pairwise(prompts, responses_a, responses_b, principles)
    rationales = [('', '')] * len(prompts)
  return [{'index': start + i, 'prompt': prompts[i], 'response_a': _text(responses_a[i]),
           'response_b': _text(responses_b[i]), 'p_a_better': float(pref.p_a_better[i]),
           'p_ab': float(pref.p_ab[i]), 'p_ba': float(np.nan_to_num(pref.p_ba[i], nan=-1.0)),
           'consistent': bool(pref.consistent[i]), 'skipped': bool(pref.skipped[i]),
           'principle': principles[i] or '', 'rationale_ab': rationales[i][0],
           'rationale_ba': rationales[i][1], 'judge': judge.name, 'source': 'judge'}
          for i in range(len(prompts))]


def human_rows(prompts: Sequence[str], responses_a: Sequence[Any], responses_b: Sequence[Any],
               labels: Sequence[float], start: int, name: str) -> list[dict]:
  """Preference rows (`ROW_FIELDS`) of human labels P(A better) (`name`: where they came from)."""
  return [{'index': start + i, 'prompt': prompts[i], 'response_a': _text(responses_a[i]),
           'response_b': _text(responses_b[i]), 'p_a_better': float(labels[i]),
           'p_ab': float(labels[i]), 'p_ba': -1.0, 'consistent': True,
           'skipped': not (isinstance(responses_a[i], str) and isinstance(responses_b[i], str)),
           'principle': '', 'rationale_ab': '', 'rationale_ba': '', 'judge': name,
           'source': 'human'} for i in range(len(prompts))]


def _text(x: Any) -> str:
  return x if isinstance(x, str) else ''
