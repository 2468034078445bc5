"""Reward sources: what turns a batch of sampled responses into sequence rewards for RL.

`reward_model_rewards` is canonical RLAIF: a reward model trained on AI preferences, its scalar on
prompt + response normalised by the statistics saved with it. `judge_rewards` is d-RLAIF: the judge's
expected 1-10 score of each (prompt, response), rescaled to [-1, 1]. `make_reward_source` picks the one
rl.reward names. Shapes: B responses, P prompt length, N response length.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax.generation import scoring
from rlaif_jax.infra import distributed
from rlaif_jax.models import transformer as model_lib
from rlaif_jax.rl.config import RLConfig
from rlaif_jax.training import reward_model as rm
from rlaif_jax.infra.errors import UserError


class Responses(NamedTuple):
  """What a reward source reads: the prompts (texts for a judge, tokens for a reward model) and the
  sampled responses."""
  prompt_texts: Sequence[str] | None
  prompt: jax.Array  # [B, P] left-padded
  prompt_valid: jax.Array
  response: jax.Array  # [B, N]
  mask: jax.Array  # [B, N]


class Rewards(NamedTuple):
  raw: np.ndarray  # [B] what the reward source said
  normalized: np.ndarray  # [B] the reward RL optimizes (before the missing-stop penalty)


RewardSource = Callable[[Responses], Rewards]


def reward_model_rewards(rm_model: model_lib.Transformer, rm_params: Any, mesh: jax.sharding.Mesh,
                         stats: rm.RewardStats) -> RewardSource:
  """Canonical RLAIF: the reward model's scalar on prompt + response, normalised by its saved
  statistics. The reward model must share the policy's tokenizer (tokens are passed as they are)."""
  reward = scoring.jit_response_fn(
      rm_model, mesh, lambda m, prompt, prompt_valid, response, mask: rm.sequence_rewards(
          m, jnp.concatenate([prompt, response], 1), jnp.concatenate([prompt_valid, mask], 1)))

  def source(x: Responses) -> Rewards:
    raw = distributed.to_host(reward(rm_params, x.prompt, x.prompt_valid, x.response, x.mask))
    return Rewards(raw, stats.normalize(raw).astype(np.float32))

  source.jitted = reward.jitted
  return source


def judge_rewards(judge: Any, tokenizer: Any) -> RewardSource:
  """d-RLAIF: the judge (`feedback.judge.Judge`) scores each (prompt, response) directly; its expected
  1-10 score rescaled to [-1, 1] is both the raw and the normalised reward. Needs the prompts' texts."""

  def source(x: Responses) -> Rewards:
    if x.prompt_texts is None:
      raise ValueError('Judge rewards (rl.reward=judge) need the prompt texts; pass '
                       'PromptBatch(texts=...).')
    response, mask = distributed.to_host((x.response, x.mask))
    texts = [tokenizer.decode(r[m], skip_special_tokens=True) for r, m in zip(response, mask)]
    rewards, _ = judge.direct_reward(list(x.prompt_texts), texts)
    rewards = np.asarray(rewards, np.float32)
    return Rewards(rewards, rewards)

  return source


def judge_pair_rewards(judge: Any, tokenizer: Any) -> RewardSource:
  """Online DPO's pairwise labels (rl.preference='pairwise'): rows 2i and 2i + 1 are prompt i's two
  samples; the judge's debiased soft preference p of the pair becomes their "scores" (p, 1 - p),
  which `online_dpo.preference_targets` reads back."""

  def source(x: Responses) -> Rewards:
    if x.prompt_texts is None:
      raise ValueError('Pairwise judge labels need the prompt texts; pass PromptBatch(texts=...).')
    response, mask = distributed.to_host((x.response, x.mask))
    texts = [tokenizer.decode(r[m], skip_special_tokens=True) for r, m in zip(response, mask)]
    p = judge.pairwise(list(x.prompt_texts[0::2]), texts[0::2], texts[1::2]).p_a_better
    scores = np.stack([p, 1 - p], axis=1).reshape(-1).astype(np.float32)
    return Rewards(scores, scores)

  return source


def make_reward_source(cfg: RLConfig, *, reward_model: tuple | None = None, judge: Any = None,
                       tokenizer: Any = None) -> RewardSource:
  """The reward source rl.reward names: 'reward_model' needs reward_model=(model, params, mesh,
  stats); 'judge' needs judge= and tokenizer=."""
  if cfg.reward == 'reward_model':
    if reward_model is None:
      raise UserError("rl.reward='reward_model' needs a trained reward model (run the reward_model "
                      "stage first, or set rl.reward='judge').")
    return reward_model_rewards(*reward_model)
  if judge is None or tokenizer is None:
    raise ValueError("rl.reward='judge' needs the judge model and its tokenizer.")
  if cfg.algorithm == 'online_dpo' and cfg.preference == 'pairwise':
    return judge_pair_rewards(judge, tokenizer)
  return judge_rewards(judge, tokenizer)


def stopped(response: np.ndarray, mask: np.ndarray, stop_tokens: Sequence[int]) -> np.ndarray:
  """[B] bool: the response contains a stop token (it ended rather than ran out of tokens)."""
  return np.any(np.isin(np.asarray(response), list(stop_tokens)) & np.asarray(mask, bool), axis=1)


def apply_missing_stop_penalty(rewards: np.ndarray, ended: np.ndarray, penalty: float) -> np.ndarray:
  """Subtract `penalty` from the rewards of responses that never stopped (TRL's missing_eos_penalty)."""
  return np.where(ended, rewards, rewards - penalty).astype(np.float32)
