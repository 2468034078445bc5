"""Rollouts: a jitted KV-cache sampler and teacher-forced scoring, as pure functions.

Prompts are left-padded to a bucket length P, so every row's last prompt token sits at P - 1 and each
decode step writes the cache at the same index for the whole batch; positions count only real tokens,
so padding never shifts them. One prefill pass fills the cache with the whole prompt batch, then a
`lax.while_loop` decodes until every row has emitted a stop token or `max_new_tokens` are out.

Log-probs are those of the temperature-scaled distribution softmax(logits / T) (T = 1 when greedy),
before top-k / top-p truncation, so `score(..., temperature=T)` on the sampled tokens returns them again.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rlaif_jax import model as model_lib
from rlaif_jax import sharding as shd


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 64
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off
  stop_tokens: tuple[int, ...] = ()  # usually the tokenizer's eos and end-of-turn ids

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f'max_new_tokens must be >= 1, got {self.max_new_tokens}.')
    if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
      raise ValueError(f'Bad sampling settings {self}: need temperature >= 0, top_k >= 0, '
                       f'0 < top_p <= 1.')


class Rollout(NamedTuple):
  tokens: jax.Array  # [B, N] int32 generated tokens (pad after the stop token)
  log_probs: jax.Array  # [B, N] float32 log-prob of each token under softmax(logits / T)
  mask: jax.Array  # [B, N] bool, True for generated tokens up to and including the stop token


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Set logits outside the top-k / nucleus (top-p) set to -inf. logits: [B, V] float32."""
  neg = jnp.finfo(logits.dtype).min
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
    kept = before < top_p  # always keeps the most likely token
    cutoff = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, neg, logits)
  return logits


def argmax(logits: jax.Array) -> jax.Array:
  """First index of the maximum over the last axis: [B, V] -> [B]. Two plain reductions, which XLA
  runs several times faster on CPU than `jnp.argmax`'s variadic (value, index) reduction."""
  top = jnp.max(logits, axis=-1, keepdims=True)
  iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.min(jnp.where(logits == top, iota, logits.shape[-1]), axis=-1)


def choose(logits: jax.Array, key: jax.Array, cfg: SamplingConfig) -> tuple[jax.Array, jax.Array]:
  """Next token and its log-prob under softmax(logits / T). logits: [B, V] -> ([B], [B])."""
  logits = logits.astype(jnp.float32)
  if cfg.temperature == 0:
    token = argmax(logits)
    scaled = logits
  else:
    scaled = logits / cfg.temperature
    token = jax.random.categorical(key, filter_logits(scaled, cfg.top_k, cfg.top_p), axis=-1)
  logp = jax.nn.log_softmax(scaled, axis=-1)
  return token.astype(jnp.int32), jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


def _is_stop(token: jax.Array, stop_tokens: Sequence[int]) -> jax.Array:
  if not stop_tokens:
    return jnp.zeros(token.shape, bool)
  return jnp.isin(token, jnp.asarray(stop_tokens, jnp.int32))


class Decoding(NamedTuple):
  """The sampler's loop state between decode steps."""
  i: jax.Array  # int32: response tokens produced so far
  cache: model_lib.KVCache
  key_valid: jax.Array  # [B, P + N] bool: cache slots that may be attended
  done: jax.Array  # [B] bool: the row has emitted a stop token
  token: jax.Array  # [B] int32: the last token, fed at the next step
  pos: jax.Array  # [B] int32: its position
  tokens: jax.Array  # [B, N]
  log_probs: jax.Array  # [B, N]
  mask: jax.Array  # [B, N]
  key: jax.Array


def prefill(model: model_lib.Transformer, prompt: jax.Array, prompt_valid: jax.Array, key: jax.Array,
            cfg: SamplingConfig, pad_id: int = 0) -> Decoding:
  """One pass over the left-padded prompts [B, P] fills the KV cache and picks the first token."""
  b, p = prompt.shape
  n = cfg.max_new_tokens
  rules = model.cfg.logical_axis_rules
  cache = model_lib.KVCache.zeros(model.cfg, b, p + n)
  k_axes, v_axes = ('batch', 'act_kv_heads', None, 'length'), ('batch', 'act_kv_heads', 'length', None)
  cache = cache._replace(k=tuple(shd.constrain(x, k_axes, rules) for x in cache.k),
                         v=tuple(shd.constrain(x, v_axes, rules) for x in cache.v))
  key_valid = jnp.concatenate([prompt_valid, jnp.zeros((b, n), bool)], axis=1)  # [B, P + N]
  positions = model_lib.positions_from_mask(prompt_valid)
  prefill_mask = model_lib.causal_mask(prompt_valid)
  prefill_mask = jnp.concatenate([prefill_mask, jnp.zeros((b, p, n), bool)], axis=2)
  out = model(prompt, positions, prefill_mask, cache, last_only=True, prefill=True)
  key, step_key = jax.random.split(key)
  token, logp = choose(out.logits[:, -1], step_key, cfg)
  return Decoding(i=jnp.int32(1), cache=out.cache, key_valid=key_valid,
                  done=_is_stop(token, cfg.stop_tokens), token=token, pos=positions[:, -1] + 1,
                  tokens=jnp.full((b, n), pad_id, jnp.int32).at[:, 0].set(token),
                  log_probs=jnp.zeros((b, n), jnp.float32).at[:, 0].set(logp),
                  mask=jnp.zeros((b, n), bool).at[:, 0].set(True), key=key)


def decode_step(model: model_lib.Transformer, s: Decoding, cfg: SamplingConfig,
                pad_id: int = 0) -> Decoding:
  """Feed the last token, write its keys and values into the cache, pick the next token."""
  p = s.key_valid.shape[1] - s.tokens.shape[1]
  key_valid = s.key_valid.at[:, p + s.i - 1].set(True)  # the token fed now becomes attendable
  out = model(s.token[:, None], s.pos[:, None], key_valid[:, None, :], s.cache)
  key, step_key = jax.random.split(s.key)
  new, logp = choose(out.logits[:, 0], step_key, cfg)
  live = ~s.done
  new = jnp.where(live, new, pad_id)
  return Decoding(i=s.i + 1, cache=out.cache, key_valid=key_valid,
                  done=s.done | _is_stop(new, cfg.stop_tokens), token=new, pos=s.pos + 1,
                  tokens=s.tokens.at[:, s.i].set(new),
                  log_probs=s.log_probs.at[:, s.i].set(jnp.where(live, logp, 0.0)),
                  mask=s.mask.at[:, s.i].set(live), key=key)


def sample(model: model_lib.Transformer, prompt: jax.Array, prompt_valid: jax.Array, key: jax.Array,
           cfg: SamplingConfig, pad_id: int = 0) -> Rollout:
  """Sample responses. prompt, prompt_valid: [B, P], left-padded. Call under jit (see `make_sampler`)."""
  n = cfg.max_new_tokens
  s = jax.lax.while_loop(lambda s: (s.i < n) & ~jnp.all(s.done),
                         lambda s: decode_step(model, s, cfg, pad_id),
                         prefill(model, prompt, prompt_valid, key, cfg, pad_id))
  return Rollout(s.tokens, s.log_probs, s.mask)


class Scores(NamedTuple):
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


def score(model: model_lib.Transformer, prompt: jax.Array, prompt_valid: jax.Array,
          response: jax.Array, response_mask: jax.Array, temperature: float = 1.0) -> Scores:
  """Teacher-forced scores of responses [B, N] after left-padded prompts [B, P] (masked to 0 past ends)."""
  out = response_forward(model, prompt, prompt_valid, response, response_mask)
  b, n = response.shape
  w = model.embed[...] if model.cfg.tie_word_embeddings else model.lm_head[...].T
  logp, entropy = head_log_probs(out.hidden.reshape(b * n, -1), w, response.reshape(-1),
                                 jnp.float32(1.0 / (temperature or 1.0)))
  logp, entropy = logp.reshape(b, n), entropy.reshape(b, n)
  values = None if out.values is None else out.values * response_mask
  return Scores(logp * response_mask, entropy * response_mask, values)


# --------------------------------------------------------------------------- jitted entry points

def model_shardings(model: model_lib.Transformer, mesh: jax.sharding.Mesh):
  """(state shardings, [B, ...] batch sharding, replicated sharding) for a model on a mesh."""
  rules = model.cfg.logical_axis_rules
  state = nnx.state(model)
  batch = NamedSharding(mesh, shd.logical_to_spec(('batch',), rules, None, mesh))
  return shd.state_shardings(state, mesh, rules), batch, NamedSharding(mesh, PartitionSpec())


def make_sampler(model: model_lib.Transformer, mesh: jax.sharding.Mesh, cfg: SamplingConfig,
                 pad_id: int = 0):
  """`fn(state, prompt, prompt_valid, key) -> Rollout`, jitted with explicit shardings.

  Compiles once per prompt shape [B, P]; bucket P (see `bucket_length`) to bound recompiles.
  """
  graphdef = nnx.graphdef(model)
  state_sh, batch, repl = model_shardings(model, mesh)

  def fn(state, prompt, prompt_valid, key):
    return sample(nnx.merge(graphdef, state), prompt, prompt_valid, key, cfg, pad_id)

  shardings = (state_sh, batch, batch, repl)
  return shd.on_mesh(jax.jit(fn, in_shardings=shardings, out_shardings=batch), mesh, shardings)


def jit_response_fn(model: model_lib.Transformer, mesh: jax.sharding.Mesh, fn: Callable):
  """Jit `fn(model, prompt, prompt_valid, response, response_mask)` of responses as
  `f(state, prompt, prompt_valid, response, response_mask)`: the state sharded by the rules, the
  [B, ...] inputs and outputs over the batch axes, run with the mesh set."""
  graphdef = nnx.graphdef(model)
  state_sh, batch, _ = model_shardings(model, mesh)
  shardings = (state_sh,) + (batch,) * 4
  jitted = jax.jit(lambda state, *xs: fn(nnx.merge(graphdef, state), *xs), in_shardings=shardings,
                   out_shardings=batch)
  return shd.on_mesh(jitted, mesh, shardings)


def make_scorer(model: model_lib.Transformer, mesh: jax.sharding.Mesh, temperature: float = 1.0):
  """`fn(state, prompt, prompt_valid, response, response_mask) -> Scores`, jitted."""
  return jit_response_fn(model, mesh, lambda m, *xs: score(m, *xs, temperature))


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  """Smallest bucket >= n; a clear error when n exceeds the largest."""
  for b in sorted(buckets):
    if n <= b:
      return b
  raise ValueError(f'Prompt of {n} tokens exceeds the largest prompt bucket {max(buckets)}; add a '
                   f'larger bucket to the sampling config or truncate the prompts.')


def left_pad(token_lists: Sequence[Sequence[int]], length: int, pad_id: int):
  """Token lists -> (tokens [B, length] int32, valid [B, length] bool), right-aligned (left padding)."""
  tokens = np.full((len(token_lists), length), pad_id, np.int32)
  valid = np.zeros((len(token_lists), length), bool)
  for i, ids in enumerate(token_lists):
    if len(ids) > length:
      raise ValueError(f'Prompt {i} has {len(ids)} tokens, more than the length {length}.')
    if len(ids):
      tokens[i, length - len(ids):] = ids
      valid[i, length - len(ids):] = True
  return tokens, valid


def encode_texts(tokenizer: Any, prompts: Sequence[str], chat: bool) -> list[list[int]]:
  """Token ids of each prompt: as a user turn with the chat template and generation prompt when
  `chat`, else the plain text without special tokens."""
  if chat:
    return [list(tokenizer.apply_chat_template(
        [{'role': 'user', 'content': p}], add_generation_prompt=True, tokenize=True,
        return_dict=True)['input_ids']) for p in prompts]
  return [tokenizer.encode(p, add_special_tokens=False) for p in prompts]


class TextGenerator:
  """Strings in, strings out: chat template (optional), bucketing, the jitted sampler, decoding."""

  def __init__(self, model: model_lib.Transformer, tokenizer: Any, mesh: jax.sharding.Mesh,
               prompt_buckets: Sequence[int] = (64, 128, 256, 512, 1024, 2048)):
    self.model, self.tokenizer, self.mesh = model, tokenizer, mesh
    self.state = nnx.state(model)
    self.buckets = tuple(prompt_buckets)
    self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    self.batch_multiple = shd.batch_shards(mesh, model.cfg.logical_axis_rules)
    self._samplers: dict[SamplingConfig, Any] = {}

  def encode(self, prompts: Sequence[str], chat: bool) -> list[list[int]]:
    return encode_texts(self.tokenizer, prompts, chat)

  def stop_tokens(self) -> tuple[int, ...]:
    eos = self.tokenizer.eos_token_id
    return () if eos is None else (int(eos),)

  def __call__(self, prompts: Sequence[str], cfg: SamplingConfig, key: jax.Array,
               chat: bool = True) -> list[str]:
    if not cfg.stop_tokens:
      cfg = dataclasses.replace(cfg, stop_tokens=self.stop_tokens())
    ids = self.encode(prompts, chat)
    length = bucket_length(max(len(x) for x in ids), self.buckets)
    ids = shd.fill_batch(ids, self.batch_multiple)
    tokens, valid = left_pad(ids, length, self.pad_id)
    if cfg not in self._samplers:
      self._samplers[cfg] = make_sampler(self.model, self.mesh, cfg, self.pad_id)
    out = jax.device_get(self._samplers[cfg](self.state, tokens, valid, key))
    texts = []
    for row, m in zip(out.tokens[:len(prompts)], out.mask[:len(prompts)]):
      kept = [int(t) for t, k in zip(row, m) if k and int(t) not in cfg.stop_tokens]
      texts.append(self.tokenizer.decode(kept, skip_special_tokens=True))
    return texts
