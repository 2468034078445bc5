"""Reward functions of text: what a reward term that reads the decoded responses computes.

A term's name says which (`rl.config.reward_kind`): 'check:NAME' (a programmatic check), a
'package.module:function' (a user's (prompt, response) -> float, as TRL's reward_funcs) — both
resolved to functions by the pipeline (`pipeline.preflight`) and passed in —, 'judge_yes_no' (the
judge's pointwise log P(Yes) - log P(No) of rl.question, as d-RLAIF's pointwise scores) and 'judge'
(its expected 1-10 score in [-1, 1]). Each is a pure function (prompts, responses) -> [B] float32;
the reward model's term reads tokens instead (`rewards.reward_model_rewards`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from rlaif_jax.infra.errors import UserError
from rlaif_jax.rl.config import reward_kind

TextReward = Callable[[Sequence[str], Sequence[str]], np.ndarray]  # (prompts, responses) -> [B]
Function = Callable[[str, str], float]  # (prompt, response) -> score
NEEDS_JUDGE = ('judge', 'judge_yes_no')


def per_response(fn: Function, name: str) -> TextReward:
  """A (prompt, response) -> float function applied row by row; a value that is not a finite
  number is a one-line error naming the function and the row."""

  def reward(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    out = np.empty(len(responses), np.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
      v = fn(p, r)
      if (isinstance(v, (bool, str)) or not isinstance(v, (int, float, np.number))
          or not math.isfinite(v)):
        raise UserError(f'Reward {name!r} returned {v!r} for response {i} ({r[:40]!r}); a reward '
                        f'function must return a finite float.')
      out[i] = v
    return out

  return reward


def judge_yes_no(judge: Any, question: str) -> TextReward:
  """The judge's log P(Yes) - log P(No) of `question` about each (prompt, response)."""

  def reward(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    scores, _ = judge.yes_no(list(prompts), list(responses), question)
    return np.asarray(scores, np.float32)

  return reward


def judge_score(judge: Any) -> TextReward:
  """d-RLAIF: the judge's expected 1-10 score of each (prompt, response), rescaled to [-1, 1]."""

  def reward(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    rewards, _ = judge.direct_reward(list(prompts), list(responses))
    return np.asarray(rewards, np.float32)

  return reward


def text_reward(name: str, function: Function | None = None, judge: Any = None,
                question: str = '') -> TextReward:
  """The reward function a text term names (not 'reward_model'): `function` for a check or a user's
  function (resolved by the caller), the judge for its terms."""
  kind = reward_kind(name)
  if kind == 'reward_model':
    raise ValueError("'reward_model' reads tokens, not text: use rewards.reward_model_rewards.")
  if kind in NEEDS_JUDGE:
    if judge is None:
      raise ValueError(f'The reward {name!r} needs the judge model (judge=).')
    return judge_yes_no(judge, question) if kind == 'judge_yes_no' else judge_score(judge)
  if function is None:
    raise ValueError(f'The reward {name!r} needs its function (functions={{{name!r}: fn}}).')
  return per_response(function, name)
