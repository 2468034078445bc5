"""Advantages and returns: per-token rewards with the KL penalty, GAE as a reverse `lax.scan`, whitening,
and the sequence-level baselines of REINFORCE (batch mean) and RLOO (leave-one-out).

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
  """REINFORCE (batch-mean baseline) and RLOO (leave-one-out over a prompt's samples): [B] -> [B]."""
  if cfg.algorithm == 'rloo':
    k = cfg.samples_per_prompt
    s = scores.reshape(-1, k)
    return (s - (s.sum(axis=1, keepdims=True) - s) / (k - 1)).reshape(-1)
  return scores - jnp.mean(scores)


def advantages_and_returns(r: Rollout, kl_coef, cfg: RLConfig):
  """Per-token advantages and value targets; the KL penalty enters the rewards for every algorithm."""
  kl = kl_penalty(r.old_log_probs, r.ref_log_probs, cfg.kl_estimator)
  if cfg.algorithm == 'ppo':
    rewards = token_rewards(r.scores, kl, r.mask, kl_coef)
    adv, returns = gae(rewards, r.old_values, r.mask, cfg.gamma, cfg.lam)
  else:  # sequence-level: score minus the KL of the whole response, with a baseline
    seq = r.scores - kl_coef * jnp.sum(kl * r.mask, axis=1)
    adv = sequence_advantages(seq, cfg)[:, None] * r.mask
    returns = jnp.zeros_like(adv)
  if cfg.whiten_advantages:
    adv = whiten(adv, r.mask)
  return adv, returns, kl
