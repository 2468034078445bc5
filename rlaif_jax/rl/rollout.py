"""A rollout batch: what one RL iteration hands the update.

Shapes: B responses (prompts x samples per prompt), P left-padded prompt length, N response length.
"""

from __future__ import annotations

from typing import NamedTuple

import jax


class Rollout(NamedTuple):
  """Prompts, sampled responses, their log-probs under the sampling and reference policies, and
  each response's sequence score."""
  prompt: jax.Array  # [B, P] left-padded
  prompt_valid: jax.Array  # [B, P]
  response: jax.Array  # [B, N]
  mask: jax.Array  # [B, N]
  old_log_probs: jax.Array  # [B, N] under the sampling policy
  ref_log_probs: jax.Array  # [B, N] under the frozen reference
  old_values: jax.Array | None  # [B, N] values before the update; None: the update computes them
  scores: jax.Array  # [B] sequence scores (reward model, judge, or a programmatic reward)
