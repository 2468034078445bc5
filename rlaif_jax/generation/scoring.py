"""Teacher-forced scores of given responses: per-token log-probs and entropies under the policy, and
the scalar head's values, from one forward pass over prompt + response.

Shapes: B rows, P left-padded prompt length, N response length, E embed, V vocab. `response_mask`
[B, N] is True for real response tokens (up to and including the stop token); everything past it is 0.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import transformer as model_lib


class TokenScores(NamedTuple):
  """What `token_scores` returns."""
  log_probs: jax.Array  # [B, N] log-prob of each response token under softmax(logits / T)
  entropy: jax.Array  # [B, N] entropy of that distribution
  values: jax.Array | None  # [B, N] scalar head on the state *before* each response token


def response_forward(model: model_lib.Transformer, prompt: jax.Array, prompt_valid: jax.Array,
                     response: jax.Array, response_mask: jax.Array) -> model_lib.Output:
  """Forward pass over prompt + response with outputs (logits, values) only at the N positions that
  predict the response tokens: P - 1 .. P + N - 2. The last response token is not fed (no output
  needs it), so the outputs come out exactly [B, N, ...] with no slicing copy."""
  p = prompt.shape[1]
  tokens = jnp.concatenate([prompt, response[:, :-1]], axis=1)
  valid = jnp.concatenate([prompt_valid, response_mask[:, :-1]], axis=1)
  return model_lib.forward(model, tokens, valid, outputs_from=p - 1)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """Mean of x over the entries where mask is True (0 when there are none)."""
  mask = mask.astype(x.dtype)
  return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


@jax.custom_vjp
def head_log_probs(hidden: jax.Array, w: jax.Array, targets: jax.Array, scale: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """log softmax(scale * hidden @ w.T)[targets] and the entropy of that softmax, per row.

  hidden [M, E], w [V, E] (LM-head rows), targets [M] -> ([M], [M]) float32. The gradient is written
  out: one elementwise pass makes d logits from the saved log-probs, then two matmuls, whose layouts
  spare XLA on CPU the slow transposed copy of the [M, V] gradient that autodiff led it to."""
  return _head_forward(hidden, w, targets, scale)[:2]


def _head_forward(hidden, w, targets, scale):
  z = (hidden @ w.astype(hidden.dtype).T).astype(jnp.float32) * scale
  logp_all = z - jax.nn.logsumexp(z, axis=-1, keepdims=True)
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  logp = jnp.take_along_axis(logp_all, targets[:, None], axis=-1)[:, 0]
  return logp, entropy, logp_all


def _head_fwd(hidden, w, targets, scale):
  logp, entropy, logp_all = _head_forward(hidden, w, targets, scale)
  return (logp, entropy), (hidden, w, targets, scale, logp_all, entropy)


def _head_bwd(res, grads):
  hidden, w, targets, scale, logp_all, entropy = res
  d_logp, d_entropy = grads
  p = jnp.exp(logp_all)
  onehot = jnp.arange(logp_all.shape[-1])[None, :] == targets[:, None]
  # d log p_t / dz = onehot - p;  d H / dz = -p (log p + H)
  dz = scale * (d_logp[:, None] * (onehot - p) - d_entropy[:, None] * p * (logp_all + entropy[:, None]))
  d_hidden = (dz @ w.astype(jnp.float32)).astype(hidden.dtype)
  d_w = jnp.einsum('me,mv->ev', hidden.astype(jnp.float32), dz).T.astype(w.dtype)
  return d_hidden, d_w, None, jnp.zeros_like(scale)  # the temperature is not trained


head_log_probs.defvjp(_head_fwd, _head_bwd)


def token_scores(model: model_lib.Transformer, prompt: jax.Array, prompt_valid: jax.Array,
                 response: jax.Array, response_mask: jax.Array, temperature: float = 1.0
                 ) -> TokenScores:
  """Teacher-forced scores of responses [B, N] after left-padded prompts [B, P] (masked to 0 past ends)."""
  out = response_forward(model, prompt, prompt_valid, response, response_mask)
  b, n = response.shape
  w = model.embed[...] if model.cfg.tie_word_embeddings else model.lm_head[...].T
  logp, entropy = head_log_probs(out.hidden.reshape(b * n, -1), w, response.reshape(-1),
                                 jnp.float32(1.0 / (temperature or 1.0)))
  logp, entropy = logp.reshape(b, n), entropy.reshape(b, n)
  values = None if out.values is None else out.values * response_mask
  return TokenScores(logp * response_mask, entropy * response_mask, values)


def jit_response_fn(model: model_lib.Transformer, mesh: jax.sharding.Mesh, fn: Callable):
  """Jit `fn(model, prompt, prompt_valid, response, response_mask)` of responses as
  `f(state, prompt, prompt_valid, response, response_mask)`: the state sharded by the rules, the
  [B, ...] inputs and outputs over the batch axes, run with the mesh set."""
  graphdef = nnx.graphdef(model)
  state_sh, batch, _ = shd.model_shardings(model, mesh)
  shardings = (state_sh,) + (batch,) * 4
  jitted = jax.jit(lambda state, *xs: fn(nnx.merge(graphdef, state), *xs), in_shardings=shardings,
                   out_shardings=batch)
  return shd.on_mesh(jitted, mesh, shardings)


def jit_token_scores(model: model_lib.Transformer, mesh: jax.sharding.Mesh, temperature: float = 1.0):
  """`fn(state, prompt, prompt_valid, response, response_mask) -> TokenScores`, jitted."""
  return jit_response_fn(model, mesh, lambda m, *xs: token_scores(m, *xs, temperature))
