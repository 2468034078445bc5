"""Constitutions: principles drawn per comparison (recorded with the label), and supervised
Constitutional AI's critique-and-revise of the policy's own responses."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from rlaif_jax.generation import text as text_lib
from rlaif_jax.generation.sampler import SamplingConfig
from rlaif_jax.infra.errors import UserError


def principles_for(constitution: Sequence[str] | None, seed: int, start: int, n: int
                   ) -> list[str | None]:
  """The principle of comparisons start .. start + n - 1: drawn by a generator seeded with (seed,
  index), so each comparison's principle is fixed whatever batch it is labeled in."""
  if not constitution:
    return [None] * n
  return [constitution[int(np.random.default_rng([seed, start + i]).integers(len(constitution)))]
          for i in range(n)]


def sample_principles(principles: Sequence[str], n: int, seed: int) -> list[str]:
  """One principle per comparison, drawn with a seeded generator (record it with the label)."""
  rng = np.random.default_rng(seed)
  return [principles[i] for i in rng.integers(0, len(principles), n)]


CRITIQUE_REQUEST = ('Here is a conversation and the assistant\'s last response.\n\n{context}\n\n'
                    'Response: {response}\n\nCritique the response according to this principle: '
                    '{principle}\nName its specific problems in a few sentences.')
REVISION_REQUEST = ('Here is a conversation and the assistant\'s last response.\n\n{context}\n\n'
                    'Response: {response}\n\nCritique: {critique}\n\nRewrite the response so that '
                    'it fixes the problems in the critique and follows this principle: {principle}\n'
                    'Answer with the rewritten response only.')


def critique_and_revise(generator: text_lib.TextGenerator, prompts: Sequence[str],
                        responses: Sequence[str], principles: Sequence[str], key: jax.Array,
                        settings: SamplingConfig, rounds: int = 1) -> list[dict]:
  """Supervised Constitutional AI: critique each response against its principle, revise it, and
  repeat for `rounds`. Returns one record per prompt with every critique and revision; the final
  revision is the fine-tuning target (`revision`). An empty revision keeps the previous text."""
  if rounds < 1:
    raise UserError(f'rounds must be >= 1, got {rounds}.')
  current = list(responses)
  history = [{'prompt': p, 'response': r, 'principle': c, 'critiques': [], 'revisions': []}
             for p, r, c in zip(prompts, responses, principles)]
  for k in jax.random.split(key, rounds):
    k_crit, k_rev = jax.random.split(k)
    critiques = generator([CRITIQUE_REQUEST.format(context=p, response=r, principle=c)
                           for p, r, c in zip(prompts, current, principles)], settings, k_crit)
    revisions = generator([REVISION_REQUEST.format(context=p, response=r, critique=q, principle=c)
                           for p, r, q, c in zip(prompts, current, critiques, principles)],
                          settings, k_rev)
    for h, q, r in zip(history, critiques, revisions):
      h['critiques'].append(q.strip())
      h['revisions'].append(r.strip())
    current = [r.strip() or old for r, old in zip(revisions, current)]
  for h, r in zip(history, current):
    h['revision'] = r
  return history
