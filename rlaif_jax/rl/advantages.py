"""Advantages and returns: per-token rewards with the KL penalty, GAE as a reverse `lax.scan`, whitening,
and the sequence-level advantages of REINFORCE (batch mean), RLOO (leave-one-out) and GRPO (group
normalised; Dr. GRPO without the std).

Shapes: B responses, T response tokens; `mask` [B, T] is True for real response tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlaif_jax.rl.config import RLConfig
from rlaif_jax.generation.scoring import masked_mean
from rlaif_jax.rl.losses import kl_penalty
from rlaif_jax.rl.rollout import Rollout


def whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
  """Normalise x over its masked entries to unit variance (and zero mean); masked-out entries -> 0."""
  mean = masked_mean(x, mask)
  var = masked_mean(jnp.square(x - mean), mask)
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return out * mask


def token_rewards(scores: jax.Array, kl: jax.Array, mask: jax.Array, kl_coef: float | jax.Array
                  ) -> jax.Array:
  """Per-token rewards [B, T]: -kl_coef * kl on every response token, plus the sequence score [B] on
  its last real token."""
  mask_f = mask.astype(jnp.float32)
  last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
  at_end = jax.nn.one_hot(last, mask.shape[1], dtype=jnp.float32) * mask_f
  return (-kl_coef * kl) * mask_f + scores[:, None] * at_end


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float
        ) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation as a reverse `lax.scan` over response tokens.

  rewards, values, mask: [B, T]. The state after the last real token is terminal (value 0).
  Returns (advantages, returns), both [B, T] and zero where mask is False.
  """
  mask_f = mask.astype(jnp.float32)
  next_values = jnp.concatenate([values[:, 1:] * mask_f[:, 1:], jnp.zeros_like(values[:, :1])], 1)
  next_mask = jnp.concatenate([mask_f[:, 1:], jnp.zeros_like(mask_f[:, :1])], 1)
  deltas = rewards + gamma * next_values - values

  def step(carry, xs):
    delta, nm, m = xs
    adv = (delta + gamma * lam * nm * carry) * m
    return adv, adv

  _, adv = jax.lax.scan(step, jnp.zeros(rewards.shape[0], jnp.float32),
                        (deltas.T, next_mask.T, mask_f.T), reverse=True)
  advantages = adv.T
  return advantages, (advantages + values) * mask_f


def sequence_advantages(scores: jax.Array, cfg: RLConfig) -> jax.Array:
  """One advantage per response, [B] -> [B]: REINFORCE (batch-mean baseline), RLOO (leave-one-out
  over a prompt's samples), GRPO (minus the group mean, divided by the group's std, the batch's, or
  nothing: Dr. GRPO). A prompt's samples are adjacent rows; the reshape is over the global batch,
  so groups are whole however the rows are sharded."""
  k = cfg.samples_per_prompt
  if cfg.algorithm == 'grpo':
    s = scores.reshape(-1, k)
    centered = (s - s.mean(axis=1, keepdims=True)).reshape(-1)
    if cfg.scale_rewards == 'group':
      return centered / (jnp.repeat(jnp.std(s, axis=1, ddof=1), k) + GROUP_STD_EPS)
    if cfg.scale_rewards == 'batch':
      return centered / (jnp.std(scores, ddof=1) + GROUP_STD_EPS)
    return centered
  if cfg.algorithm == 'rloo':
    s = scores.reshape(-1, k)
    adv = (s - (s.sum(axis=1, keepdims=True) - s) / (k - 1)).reshape(-1)
  else:
    adv = scores - jnp.mean(scores)
  if cfg.whiten_advantages:  # normalised over responses, not tokens: both baselines have mean 0,
    adv = adv * jax.lax.rsqrt(jnp.mean(jnp.square(adv)) + 1e-8)  # so only the scale changes
  return adv


GROUP_STD_EPS = 1e-4  # as TRL's GRPOTrainer: a group with equal rewards gets advantage 0


def sequence_scores(r: Rollout, kl: jax.Array, kl_coef, cfg: RLConfig) -> jax.Array:
  """Each response's score, minus kl_coef x its summed KL when the leash is in the reward."""
  if cfg.kl_location == 'loss':
    return r.scores
  return r.scores - kl_coef * jnp.sum(kl * r.mask, axis=1)


def advantages_and_returns(r: Rollout, kl_coef, cfg: RLConfig):
  """Per-token advantages and value targets. The KL penalty enters the rewards for every algorithm
  unless rl.kl_in='loss' (then the update adds it as a loss term)."""
  kl = kl_penalty(r.old_log_probs, r.ref_log_probs, cfg.kl_kind)
  if cfg.algorithm == 'ppo':
    rewards = token_rewards(r.scores, kl, r.mask, 0.0 if cfg.kl_location == 'loss' else kl_coef)
    adv, returns = gae(rewards, r.old_values, r.mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
      adv = whiten(adv, r.mask)
  else:  # sequence-level: one advantage per response, on each of its tokens
    adv = sequence_advantages(sequence_scores(r, kl, kl_coef, cfg), cfg)[:, None] * r.mask
    returns = jnp.zeros_like(adv)
  return adv, returns, kl
