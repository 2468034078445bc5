"""Teacher-forced scores of given responses: per-token log-probs and entropies under the policy, and
the scalar head's values, from one forward pass over prompt + response.

Shapes: B rows, P left-padded prompt length, N response length, E embed, V vocab. `response_mask`
[B, N] is True for real response tokens (up to and including the stop token); everything past it is 0.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import dots
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


CHUNK_ELEMENTS = 1 << 24  # logits per chunk of rows: 64 MiB of float32 (512 rows at a 32k vocabulary)


def chunk_rows(rows: int, vocab: int, elements: int | None = None) -> int:
  """Rows per chunk of the head: all of them when [rows, vocab] fits `elements` (CHUNK_ELEMENTS)."""
  return max(1, min(rows, (elements or CHUNK_ELEMENTS) // vocab))


def head_log_probs(hidden: jax.Array, w: jax.Array, targets: jax.Array, scale: jax.Array,
                   softcap: float = 0.0, chunk: int | None = None, rules: tuple = ()
                   ) -> tuple[jax.Array, jax.Array]:
  """log softmax(scale * cap(hidden @ w.T))[targets] and the entropy of that softmax, per row.

  hidden [M, E], w [V, E] (LM-head rows), targets [M] -> ([M], [M]) float32; cap(x) = softcap *
  tanh(x / softcap) when softcap > 0 (Gemma 2's final logits). The [M, V] logits never exist at
  once: rows go through in chunks (`chunk_rows`) and the backward pass keeps only each row's
  log-normaliser, recomputing a chunk's logits when it needs them, so a 128k vocabulary costs a
  chunk of logits of memory rather than [tokens, vocab] float32. The gradient is written out: one
  elementwise pass makes d logits, then two matmuls laid out so XLA on CPU needs no transposed copy
  of the [rows, V] gradient; the weight gradient accumulates over chunks sharded as the weight is
  (`rules`: the logical-axis rules; w's axes are (vocab, embed))."""
  m = hidden.shape[0]
  chunk = chunk or chunk_rows(m, w.shape[0])
  pad = -m % chunk
  if pad:
    hidden = jnp.concatenate([hidden, jnp.zeros((pad, hidden.shape[1]), hidden.dtype)])
    targets = jnp.concatenate([targets, jnp.zeros((pad,), targets.dtype)])
  logp, entropy = _chunked_head(hidden, w, targets, scale, softcap, chunk, tuple(rules))
  return logp[:m], entropy[:m]


def _logits(h, w, scale, softcap):
  """(scaled logits [c, V] float32, d scaled / d raw logits or None)."""
  raw = dots.matmul(h, w.astype(h.dtype).T).astype(jnp.float32)
  if not softcap:
    return raw * scale, None
  t = jnp.tanh(raw / softcap)
  return softcap * t * scale, scale * (1 - t * t)


def _chunks(x, chunk):
  return x.reshape(-1, chunk, *x.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _chunked_head(hidden, w, targets, scale, softcap, chunk, rules):
  return _chunked_fwd(hidden, w, targets, scale, softcap, chunk, rules)[0]


def _chunked_fwd(hidden, w, targets, scale, softcap, chunk, rules):
  def one(args):
    h, t = args
    z, _ = _logits(h, w, scale, softcap)
    lse = jax.nn.logsumexp(z, axis=-1)
    logp_all = z - lse[:, None]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return jnp.take_along_axis(logp_all, t[:, None], axis=-1)[:, 0], entropy, lse
  logp, entropy, lse = (x.reshape(-1) for x in jax.lax.map(one, (_chunks(hidden, chunk),
                                                                  _chunks(targets, chunk))))
  return (logp, entropy), (hidden, w, targets, scale, lse, entropy)


def _chunked_bwd(softcap, chunk, rules, res, grads):
  hidden, w, targets, scale, lse, entropy = res
  d_logp, d_entropy = grads
  w32 = w.astype(jnp.float32)

  def one(d_w, args):
    h, t, lse_c, ent_c, dl, de = args
    z, dz_draw = _logits(h, w, scale, softcap)
    logp_all = z - lse_c[:, None]
    p = jnp.exp(logp_all)
    onehot = jnp.arange(z.shape[-1])[None, :] == t[:, None]
    # d log p_t / dz = onehot - p;  d H / dz = -p (log p + H); dz / d raw: scale (x cap's slope)
    dz = dl[:, None] * (onehot - p) - de[:, None] * p * (logp_all + ent_c[:, None])
    draw = dz * (scale if dz_draw is None else dz_draw)
    d_h = (draw @ w32).astype(hidden.dtype)
    return sharded(d_w + jnp.einsum('me,mv->ev', h.astype(jnp.float32), draw)), d_h

  sharded = lambda d_w: shd.constrain(d_w, ('embed', 'vocab'), rules) if rules else d_w
  xs = tuple(_chunks(x, chunk) for x in (hidden, targets, lse, entropy, d_logp, d_entropy))
  d_w, d_h = jax.lax.scan(one, sharded(jnp.zeros(w.shape[::-1], jnp.float32)), xs)
  return (d_h.reshape(hidden.shape), d_w.T.astype(w.dtype), None,
          jnp.zeros_like(scale))  # the temperature is not trained


_chunked_head.defvjp(_chunked_fwd, _chunked_bwd)


def token_scores(model: model_lib.Transformer, prompt: jax.Array, prompt_valid: jax.Array,
                 response: jax.Array, response_mask: jax.Array, temperature: float = 1.0
                 ) -> TokenScores:
  """Teacher-forced scores of responses [B, N] after left-padded prompts [B, P] (masked to 0 past ends)."""
  out = response_forward(model, prompt, prompt_valid, response, response_mask)
  b, n = response.shape
  w = model.embed[...] if model.cfg.tie_word_embeddings else model.lm_head[...].T
  chunk = min(model.cfg.logit_chunk_rows, b * n) or None
  logp, entropy = head_log_probs(out.hidden.reshape(b * n, -1), w, response.reshape(-1),
                                 jnp.float32(1.0 / (temperature or 1.0)), model.cfg.final_softcap,
                                 chunk, model.cfg.logical_axis_rules)
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
