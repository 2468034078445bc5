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
ROW_FIELDS = ('index', 'prompt', 'response_a', 'response_b', 'p_a_better', 'p_ab', 'p_ba',
              'consistent', 'skipped', 'principle', 'rationale_ab', 'rationale_ba', 'judge')


def response_pairs(policy: text_lib.TextGenerator, prompts: Sequence[str], settings: SamplingConfig,
                   key: jax.Array) -> tuple[list[str], list[str]]:
  """Two independent samples per prompt, in one batch: (responses A, responses B)."""
  both = policy(list(prompts) + list(prompts), settings, key)
  return both[:len(prompts)], both[len(prompts):]


def label_batch(judge: Judge, prompts: Sequence[str], responses_a: Sequence[Any],
                responses_b: Sequence[Any], start: int, key: jax.Array, *,
                constitution: Sequence[str] | None = None, seed: int = 0,
                cot: SamplingConfig | None = None) -> list[dict]:
  """Preference rows (`ROW_FIELDS`) for prompts start .. start + len(prompts) - 1 of a dataset.
  cot: sampling settings of the rationales for chain-of-thought labels (None: plain labels)."""
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
           'rationale_ba': rationales[i][1], 'judge': judge.name} for i in range(len(prompts))]


def _text(x: Any) -> str:
  return x if isinstance(x, str) else ''
