"""Soft preferences and direct scores from the judge's answer log-probs (pure array functions).

Pairwise: P(A better) = softmax over the log-probs of the answers "1" and "2". With debiasing both
orders are scored and averaged (the second mirrored), so swapping A and B gives exactly 1 - p;
position consistency is how often both orders agree. Direct (d-RLAIF): the expected 1-10 score under
the judge's probabilities of the answers "1".."10", rescaled to [-1, 1].

Shapes: N pairs (or responses), K answer options.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class Preference(NamedTuple):
  """Soft labels of N pairs, with what debiasing saw."""
  p_a_better: np.ndarray  # [N] debiased (or raw, when debias is off) P(response A is better)
  p_ab: np.ndarray  # [N] P("1") with A shown first
  p_ba: np.ndarray  # [N] P(A better) from the swapped order (NaN when debias is off)
  consistent: np.ndarray  # [N] bool: both orders prefer the same response
  skipped: np.ndarray  # [N] bool: not text; p_a_better is 0.5 and the row is counted as skipped
  truncated: int  # responses cut to max_response_tokens


def soft_preference(logp_first: jax.Array, logp_swapped: jax.Array | None) -> tuple:
  """Choice log-probs [N, 2] of ("1", "2") for (A, B) and, when debiasing, for (B, A).

  Returns (p_a_better, p_ab, p_ba, consistent). Swapping A and B gives exactly 1 - p_a_better.
  """
  p_ab = jax.nn.softmax(logp_first, axis=-1)[:, 0]
  if logp_swapped is None:
    return p_ab, p_ab, jnp.full_like(p_ab, jnp.nan), jnp.ones(p_ab.shape, bool)
  p_ba = jax.nn.softmax(logp_swapped, axis=-1)[:, 1]  # A is shown second there
  consistent = (p_ab > 0.5) == (p_ba > 0.5)
  return (p_ab + p_ba) / 2, p_ab, p_ba, consistent


def expected_score_reward(logp_options: jax.Array, scores: Sequence[float] = tuple(range(1, 11))
                          ) -> jax.Array:
  """d-RLAIF reward: E[score] under softmax over the options' log-probs [N, K], rescaled to [-1, 1]."""
  s = jnp.asarray(scores, jnp.float32)
  expected = jnp.sum(jax.nn.softmax(logp_options, axis=-1) * s, axis=-1)
  return 2 * (expected - s.min()) / (s.max() - s.min()) - 1
