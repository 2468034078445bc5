"""PPO's pure pieces: per-token KL penalty, rewards, GAE, whitening, clipped losses, KL controller.

Shapes: B responses, T response tokens; `mask` [B, T] is True for real response tokens (up to and
including the stop token). All functions are jit-friendly and free of state.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  mask = mask.astype(x.dtype)
  return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
  """Normalise x over its masked entries to unit variance (and zero mean); masked-out entries -> 0."""
  mean = masked_mean(x, mask)
  var = masked_mean(jnp.square(x - mean), mask)
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return out * mask


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = 'k1') -> jax.Array:
  """Per-token estimate of KL(policy || reference) from sampled tokens' log-probs [B, T].

  k1: logp - ref (unbiased, can be negative); k2: (logp - ref)^2 / 2; k3: exp(ref - logp) - 1 - (ref -
  logp) (unbiased and non-negative; Schulman's estimator). `abs`: |logp - ref|.
  """
  d = logp - ref_logp
  if estimator == 'k1':
    return d
  if estimator == 'k2':
    return 0.5 * jnp.square(d)
  if estimator == 'k3':
    return jnp.expm1(-d) + d
  if estimator == 'abs':
    return jnp.abs(d)
  raise ValueError(f'Unknown KL estimator {estimator!r}; use k1, k2, k3 or abs.')


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


class PolicyLossInfo(NamedTuple):
  loss: jax.Array
  clip_fraction: jax.Array
  approx_kl: jax.Array  # k3 estimate of KL(old || new) over the batch


def policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array,
                clip_eps: float) -> PolicyLossInfo:
  """PPO's clipped surrogate, averaged over real tokens: -min(r A, clip(r, 1 +- eps) A)."""
  log_ratio = logp - old_logp
  ratio = jnp.exp(log_ratio)
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * advantages
  loss = masked_mean(-jnp.minimum(unclipped, clipped), mask)
  clip_fraction = masked_mean((jnp.abs(ratio - 1) > clip_eps).astype(jnp.float32), mask)
  approx_kl = masked_mean(jnp.expm1(log_ratio) - log_ratio, mask)
  return PolicyLossInfo(loss, clip_fraction, approx_kl)


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array,
               clip: float) -> jax.Array:
  """Clipped value loss: 0.5 * max((v - R)^2, (clip(v, v_old +- clip) - R)^2) over real tokens."""
  clipped = old_values + jnp.clip(values - old_values, -clip, clip)
  return 0.5 * masked_mean(jnp.maximum(jnp.square(values - returns), jnp.square(clipped - returns)),
                           mask)


def adaptive_kl_coef(coef: jax.Array, observed_kl: jax.Array, n_samples: int, target: float,
                     horizon: float) -> jax.Array:
  """Ziegler et al.'s proportional controller: move the KL coefficient so the observed KL (per
  sequence) approaches `target`; the error is clipped to +-20% and scaled by n_samples / horizon."""
  error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
  return coef * (1.0 + error * n_samples / horizon)
