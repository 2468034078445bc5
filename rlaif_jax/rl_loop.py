"""One RL iteration: rollout, score, KL, update, with its metrics and where the time went.

    loop = RLLoop(policy, mesh, rl_cfg, sampling_cfg, optimizer, scorer, value_model=None)
    state = loop.init()
    state, kl_coef, metrics = loop.iteration(state, ref_params, kl_coef, prompts, key)

The scorer turns responses into sequence scores: `reward_model_scorer` (canonical RLAIF: a reward
model trained on AI preferences, normalised by the statistics saved with it) or `judge_scorer`
(d-RLAIF: the judge's expected 1-10 score, rescaled to [-1, 1]). All state lives in the arguments
and results; the loop object only holds the compiled functions.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlaif_jax import model as model_lib
from rlaif_jax import ppo, rl, sampling, train
from rlaif_jax import reward_model as rm


class Prompts(NamedTuple):
  """A batch of prompts: left-padded tokens [B, P], validity [B, P], and their texts (for a judge)."""
  tokens: np.ndarray
  valid: np.ndarray
  texts: Sequence[str] | None = None


def encode_prompts(tokenizer: Any, texts: Sequence[str], length: int, chat: bool = True) -> Prompts:
  """Tokenize prompts (`sampling.encode_texts`) and left-pad them to `length`; prompts longer than
  `length` keep their last `length` tokens."""
  ids = sampling.encode_texts(tokenizer, texts, chat)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  tokens, valid = sampling.left_pad([x[-length:] for x in ids], length, pad)
  return Prompts(tokens, valid, list(texts))


class ScoreInputs(NamedTuple):
  prompt_texts: Sequence[str] | None
  prompt: jax.Array  # [B, P] left-padded
  prompt_valid: jax.Array
  response: jax.Array  # [B, N]
  mask: jax.Array  # [B, N]


class Scored(NamedTuple):
  raw: np.ndarray  # [B] what the reward source said
  normalized: np.ndarray  # [B] the score RL optimizes (before the missing-stop penalty)


Scorer = Callable[[ScoreInputs], Scored]


def reward_model_scorer(rm_model: model_lib.Transformer, rm_params: Any, mesh: jax.sharding.Mesh,
                        stats: rm.RewardStats) -> Scorer:
  """Canonical RLAIF: the reward model's scalar on prompt + response, normalised by its saved
  statistics. The reward model must share the policy's tokenizer (tokens are passed as they are)."""
  reward = sampling.jit_response_fn(
      rm_model, mesh, lambda m, prompt, prompt_valid, response, mask: rm.sequence_rewards(
          m, jnp.concatenate([prompt, response], 1), jnp.concatenate([prompt_valid, mask], 1)))

  def scorer(x: ScoreInputs) -> Scored:
    raw = np.asarray(reward(rm_params, x.prompt, x.prompt_valid, x.response, x.mask))
    return Scored(raw, stats.normalize(raw).astype(np.float32))

  scorer.jitted = reward.jitted
  return scorer


def judge_scorer(judge: Any, tokenizer: Any) -> Scorer:
  """d-RLAIF: the judge scores each (prompt, response) directly; its expected 1-10 score rescaled to
  [-1, 1] is both the raw and the normalised score. Needs the prompts' texts."""

  def scorer(x: ScoreInputs) -> Scored:
    if x.prompt_texts is None:
      raise ValueError('Judge rewards (rl.reward=judge) need the prompt texts; pass Prompts(texts=...).')
    response, mask = np.asarray(x.response), np.asarray(x.mask)
    texts = [tokenizer.decode(r[m], skip_special_tokens=True) for r, m in zip(response, mask)]
    rewards, _ = judge.direct_reward(list(x.prompt_texts), texts)
    rewards = np.asarray(rewards, np.float32)
    return Scored(rewards, rewards)

  return scorer


def make_scorer(cfg: rl.RLConfig, *, reward_model: tuple | None = None, judge: Any = None,
                tokenizer: Any = None) -> Scorer:
  """The scorer rl.reward names: 'reward_model' needs reward_model=(model, params, mesh, stats);
  'judge' needs judge= and tokenizer=."""
  if cfg.reward == 'reward_model':
    if reward_model is None:
      raise ValueError("rl.reward='reward_model' needs a trained reward model (run the reward_model "
                       "stage first, or set rl.reward='judge').")
    return reward_model_scorer(*reward_model)
  if judge is None or tokenizer is None:
    raise ValueError("rl.reward='judge' needs the judge model and its tokenizer.")
  return judge_scorer(judge, tokenizer)


def stopped(response: np.ndarray, mask: np.ndarray, stop_tokens: Sequence[int]) -> np.ndarray:
  """[B] bool: the response contains a stop token (it ended rather than ran out of tokens)."""
  return np.any(np.isin(np.asarray(response), list(stop_tokens)) & np.asarray(mask, bool), axis=1)


def apply_missing_stop_penalty(scores: np.ndarray, ended: np.ndarray, penalty: float) -> np.ndarray:
  """Subtract `penalty` from the scores of responses that never stopped (TRL's missing_eos_penalty)."""
  return np.where(ended, scores, scores - penalty).astype(np.float32)


def next_kl_coef(cfg: rl.RLConfig, coef: float, observed_kl: float, n_samples: int) -> float:
  """Fixed coefficient, or the adaptive controller when rl.kl_target > 0."""
  if cfg.kl_target <= 0:
    return coef
  return float(ppo.adaptive_kl_coef(jnp.float32(coef), jnp.float32(observed_kl), n_samples,
                                    cfg.kl_target, cfg.kl_horizon))


class RLLoop:
  """Compiled pieces of an RL iteration for one policy (and optional separate value model)."""

  def __init__(self, policy: model_lib.Transformer, mesh: jax.sharding.Mesh, cfg: rl.RLConfig,
               sampling_cfg: sampling.SamplingConfig, optimizer: optax.GradientTransformation,
               scorer: Scorer, value_model: model_lib.Transformer | None = None, pad_id: int = 0):
    self.cfg, self.sampling_cfg, self.scorer, self.mesh = cfg, sampling_cfg, scorer, mesh
    temperature = sampling_cfg.temperature or 1.0
    self.sample = sampling.make_sampler(policy, mesh, sampling_cfg, pad_id)
    self.score = sampling.make_scorer(policy, mesh, temperature)  # the reference's log-probs
    # the value model is used with rl.value_model='separate' (PPO) and ignored otherwise
    self.update = rl.make_update(policy, optimizer, mesh, cfg, temperature, value_model)

  def init(self) -> train.TrainState:
    return self.update.init()

  def iteration(self, state: train.TrainState, ref_params: Any, kl_coef: float, prompts: Prompts,
                key: jax.Array) -> tuple[train.TrainState, float, dict[str, float]]:
    """One iteration on a prompt batch (each prompt repeated rl.samples_per_prompt times).
    Returns (new state, next KL coefficient, metrics as floats)."""
    cfg = self.cfg
    k = cfg.samples_per_prompt
    tokens, valid = np.repeat(prompts.tokens, k, 0), np.repeat(prompts.valid, k, 0)
    texts = None if prompts.texts is None else [t for t in prompts.texts for _ in range(k)]
    k_sample, k_update = jax.random.split(key)
    policy = state.params['policy']

    t0 = time.perf_counter()
    out = jax.block_until_ready(self.sample(policy, tokens, valid, k_sample))
    t1 = time.perf_counter()

    ref = self.score(ref_params, tokens, valid, out.tokens, out.mask).log_probs
    # The sampler's log-probs are the policy's (same temperature): no scoring pass for them. PPO's
    # old values are left to the update, which takes them from its first forward pass when it can.
    scored = self.scorer(ScoreInputs(texts, tokens, valid, out.tokens, out.mask))
    ended = stopped(out.tokens, out.mask, self.sampling_cfg.stop_tokens)
    scores = scored.normalized
    if cfg.missing_eos_penalty:
      scores = apply_missing_stop_penalty(scores, ended, cfg.missing_eos_penalty)
    rollout = rl.Rollout(tokens, valid, out.tokens, out.mask, out.log_probs, ref, None,
                         jnp.asarray(scores, jnp.float32))
    rollout = jax.block_until_ready(rollout)
    t2 = time.perf_counter()

    state, metrics = self.update(state, rollout, kl_coef, k_update)
    metrics = {name: float(v) for name, v in jax.device_get(metrics).items()}
    t3 = time.perf_counter()

    total = t3 - t0
    metrics[f'kl_{cfg.kl_estimator}'] = metrics['kl']  # the estimator behind `kl`, by name
    metrics.update(
        reward_raw=float(np.mean(scored.raw)), reward=float(np.mean(scored.normalized)),
        stopped_fraction=float(np.mean(ended)), kl_coef=float(kl_coef),
        time_rollout=t1 - t0, time_scoring=t2 - t1, time_update=t3 - t2, seconds=total,
        share_rollout=(t1 - t0) / total, share_scoring=(t2 - t1) / total,
        share_update=(t3 - t2) / total)
    return state, next_kl_coef(cfg, kl_coef, metrics['kl'], len(scores)), metrics
