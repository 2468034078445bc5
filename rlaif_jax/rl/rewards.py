"""Reward sources: what turns a batch of sampled responses into sequence rewards for RL.

`reward_model_rewards` is canonical RLAIF: a reward model trained on AI preferences, its scalar on
prompt + response normalised by the statistics saved with it. `judge_rewards` is d-RLAIF: the judge's
expected 1-10 score of each (prompt, response), rescaled to [-1, 1]. `text_rewards` wraps a reward
function of the decoded text (`reward_functions`: a check, a user's function, the judge's yes/no
score). `make_reward_source` builds what rl.reward / rl.rewards name: one term, or a weighted sum of
several, each term's values kept for the metrics (and monitors: terms computed and logged, weight 0).
Shapes: B responses, P prompt length, N response length.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax.generation import scoring
from rlaif_jax.infra import distributed
from rlaif_jax.models import transformer as model_lib
from rlaif_jax.infra.errors import UserError
from rlaif_jax.rl import reward_functions
from rlaif_jax.rl.config import RLConfig, reward_kind
from rlaif_jax.training import reward_model as rm


class Responses(NamedTuple):
  """What a reward source reads: the prompts (texts for a judge, tokens for a reward model) and the
  sampled responses."""
  prompt_texts: Sequence[str] | None
  prompt: jax.Array  # [B, P] left-padded
  prompt_valid: jax.Array
  response: jax.Array  # [B, N]
  mask: jax.Array  # [B, N]
  response_texts: Sequence[str] | None = None  # decoded once for every text term


class Rewards(NamedTuple):
  raw: np.ndarray  # [B] what the reward source said
  normalized: np.ndarray  # [B] the reward RL optimizes (before the missing-stop penalty)
  terms: Mapping[str, np.ndarray] | None = None  # [B] per term (and monitor) of a combined source


def response_texts(x: Responses, tokenizer: Any) -> list[str]:
  """The responses as text (their real tokens, special tokens dropped); decoded once per batch."""
  if x.response_texts is not None:
    return list(x.response_texts)
  response, mask = distributed.to_host((x.response, x.mask))
  return [tokenizer.decode(r[m], skip_special_tokens=True) for r, m in zip(response, mask)]


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


def text_rewards(fn: reward_functions.TextReward, tokenizer: Any, name: str = '') -> RewardSource:
  """A reward function of (prompt texts, decoded responses) as a reward source; raw = normalized."""

  def source(x: Responses) -> Rewards:
    if x.prompt_texts is None:
      raise ValueError(f'The reward {name or "function"} reads text and needs the prompt texts; pass '
                       f'PromptBatch(texts=...).')
    values = np.asarray(fn(list(x.prompt_texts), response_texts(x, tokenizer)), np.float32)
    return Rewards(values, values)

  return source


def judge_rewards(judge: Any, tokenizer: Any) -> RewardSource:
  """d-RLAIF: the judge (`feedback.judge.Judge`) scores each (prompt, response) directly; its expected
  1-10 score rescaled to [-1, 1] is both the raw and the normalised reward. Needs the prompts' texts."""
  return text_rewards(reward_functions.judge_score(judge), tokenizer, 'judge (rl.reward=judge)')


def judge_pair_rewards(judge: Any, tokenizer: Any) -> RewardSource:
  """Online DPO's pairwise labels (rl.preference='pairwise'): rows 2i and 2i + 1 are prompt i's two
  samples; the judge's debiased soft preference p of the pair becomes their "scores" (p, 1 - p),
  which `online_dpo.preference_targets` reads back."""

  def source(x: Responses) -> Rewards:
    if x.prompt_texts is None:
      raise ValueError('Pairwise judge labels need the prompt texts; pass PromptBatch(texts=...).')
    texts = response_texts(x, tokenizer)
    p = judge.pairwise(list(x.prompt_texts[0::2]), texts[0::2], texts[1::2]).p_a_better
    scores = np.stack([p, 1 - p], axis=1).reshape(-1).astype(np.float32)
    return Rewards(scores, scores)

  return source


def weighted_sum(terms: Sequence[tuple[str, float, RewardSource]],
                 monitors: Sequence[tuple[str, RewardSource]] = (), tokenizer: Any = None
                 ) -> RewardSource:
  """sum_i w_i x term_i (raw and normalised alike), every term's and monitor's normalised values
  kept in `terms` for the metrics; the responses are decoded once for all text terms."""

  def source(x: Responses) -> Rewards:
    if tokenizer is not None:
      x = x._replace(response_texts=response_texts(x, tokenizer))
    raw = normalized = 0.0
    values = {}
    for name, weight, term in terms:
      r = term(x)
      raw, normalized = raw + weight * r.raw, normalized + weight * r.normalized
      values[name] = np.asarray(r.normalized, np.float32)
    for name, monitor in monitors:
      values[name] = np.asarray(monitor(x).normalized, np.float32)
    return Rewards(np.asarray(raw, np.float32), np.asarray(normalized, np.float32), values)

  return source


def make_reward_source(cfg: RLConfig, *, reward_model: tuple | None = None, judge: Any = None,
                       tokenizer: Any = None,
                       functions: Mapping[str, reward_functions.Function] | None = None,
                       monitors: Sequence[str] = ()) -> RewardSource:
  """The reward rl.reward / rl.rewards name: a 'reward_model' term needs reward_model=(model, params,
  mesh, stats); the judge's terms judge= and tokenizer=; check and function terms tokenizer= and
  their functions ({name: (prompt, response) -> float}, `pipeline.preflight.reward_functions`).
  monitors: names in `functions` (e.g. the principle's check) computed and logged beside the
  reward with weight 0."""
  functions = functions or {}
  terms = cfg.reward_terms
  if cfg.algorithm == 'online_dpo' and cfg.preference == 'pairwise':
    if judge is None or tokenizer is None:
      raise ValueError("rl.reward='judge' needs the judge model and its tokenizer.")
    return judge_pair_rewards(judge, tokenizer)
  sources = []
  for name, weight in terms:
    kind = reward_kind(name)
    if kind == 'reward_model':
      if reward_model is None:
        raise UserError("rl.reward='reward_model' needs a trained reward model (run the reward_model "
                        "stage first, or set rl.reward='judge').")
      sources.append((name, weight, reward_model_rewards(*reward_model)))
      continue
    if tokenizer is None or (kind in reward_functions.NEEDS_JUDGE and judge is None):
      raise ValueError(f"rl.reward={name!r} needs the judge model and its tokenizer."
                       if kind in reward_functions.NEEDS_JUDGE else
                       f"rl.reward={name!r} reads text: pass the tokenizer.")
    fn = reward_functions.text_reward(name, functions.get(name), judge, cfg.question)
    sources.append((name, weight, text_rewards(fn, tokenizer, name)))
  watched = [(m, text_rewards(reward_functions.text_reward(m, functions.get(m)), tokenizer, m))
             for m in monitors if m not in dict(terms)]
  if watched and tokenizer is None:
    raise ValueError('Monitored checks read text: pass the tokenizer.')
  reads_text = watched or any(reward_kind(name) != 'reward_model' for name, _ in terms)
  return weighted_sum(sources, watched, tokenizer if reads_text else None)


def stopped(response: np.ndarray, mask: np.ndarray, stop_tokens: Sequence[int]) -> np.ndarray:
  """[B] bool: the response contains a stop token (it ended rather than ran out of tokens)."""
  return np.any(np.isin(np.asarray(response), list(stop_tokens)) & np.asarray(mask, bool), axis=1)


def apply_missing_stop_penalty(rewards: np.ndarray, ended: np.ndarray, penalty: float) -> np.ndarray:
  """Subtract `penalty` from the rewards of responses that never stopped (TRL's missing_eos_penalty)."""
  return np.where(ended, rewards, rewards - penalty).astype(np.float32)
