"""DAPO's two batch-side pieces (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning
System at Scale", sections 3.2 and 3.4); its other two are settings of the update (clip-higher:
rl.clip_eps_high, token-level loss: rl.loss_aggregation='token_mean').

Dynamic sampling (rl.dynamic_sampling): a group whose samples all scored the same has zero
advantage under group normalisation, so it adds no policy gradient and only shrinks the batch. Such
groups are dropped and further prompt batches sampled until the batch is full of informative groups,
at most rl.max_sampling_rounds batches; should they run out, the batch is topped up with dropped
groups (no gradient; the `informative_groups` metric then says less than 1).

Overlong reward shaping (rl.overlong_buffer > 0): a response within the last `buffer` tokens of the
budget loses reward linearly, down to rl.overlong_penalty at the budget itself (a response that
ran out of tokens), instead of a cliff at the limit.

Host-side NumPy on the rollout's per-row arrays; shapes stay fixed (the update compiles once).
"""

from __future__ import annotations

import numpy as np


def overlong_penalty(lengths: np.ndarray, max_new_tokens: int, buffer: int,
                     penalty: float = 1.0) -> np.ndarray:
  """DAPO's soft overlong punishment [B] (<= 0, added to the score) of responses of `lengths`
  tokens: 0 up to max_new_tokens - buffer, then falling linearly to -penalty at max_new_tokens."""
  start = max_new_tokens - buffer
  over = np.clip(np.asarray(lengths, np.float32) - start, 0, buffer)
  return (-penalty * over / buffer).astype(np.float32)


def informative(scores: np.ndarray, group: int, tol: float = 1e-6) -> np.ndarray:
  """[B / group] bool: the groups (adjacent rows) whose scores are not all equal."""
  s = np.asarray(scores, np.float64).reshape(-1, group)
  return s.max(1) - s.min(1) > tol


def choose_groups(flags: np.ndarray, groups: int) -> np.ndarray:
  """Indices of `groups` groups out of the pooled rounds' [G] informative flags: the informative
  ones in the order they were sampled, then (if too few) the others in that order."""
  order = np.concatenate([np.flatnonzero(flags), np.flatnonzero(~flags)])
  return np.sort(order[:groups])


def rows_of(group_indices: np.ndarray, group: int) -> np.ndarray:
  """The row indices of the chosen groups (each group's rows adjacent, as sampled)."""
  return (np.asarray(group_indices)[:, None] * group + np.arange(group)).reshape(-1)
