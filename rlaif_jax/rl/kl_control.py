"""The KL coefficient: fixed, or Ziegler et al.'s adaptive controller when rl.kl_target > 0."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlaif_jax.rl.config import RLConfig


def adaptive_kl_coef(coef: jax.Array, observed_kl: jax.Array, n_samples: int, target: float,
                     horizon: float) -> jax.Array:
  """Ziegler et al.'s proportional controller: move the KL coefficient so the observed KL (per
  sequence) approaches `target`; the error is clipped to +-20% and scaled by n_samples / horizon."""
  error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
  return coef * (1.0 + error * n_samples / horizon)


def next_kl_coef(cfg: RLConfig, coef: float, observed_kl: float, n_samples: int) -> float:
  """Fixed coefficient, or the adaptive controller when rl.kl_target > 0."""
  if cfg.kl_target <= 0:
    return coef
  return float(adaptive_kl_coef(jnp.float32(coef), jnp.float32(observed_kl), n_samples,
                                cfg.kl_target, cfg.kl_horizon))
