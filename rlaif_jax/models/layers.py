"""The transformer's layers: RMSNorm, rotary embeddings, the projection matmul, attention and the
gated MLP, each with the family switches of `ModelConfig` (biases, q/k norms, norm offset, score
soft-capping, query scaling, activation).

Shapes: B batch, T query length, S key length, E embed, H query heads, K key/value heads,
G = H // K, D head dim, M MLP hidden.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from rlaif_jax.infra import sharding as shd
from rlaif_jax.infra.errors import UserError
from rlaif_jax.models import attention, dots, lora
from rlaif_jax.models.config import ModelConfig, to_dtype


def param(rngs: nnx.Rngs, shape, axes, cfg: ModelConfig, scale: float | None = None, ones=False):
  dt = to_dtype(cfg.param_dtype)
  if ones:
    value = jnp.ones(shape, dt)
  else:
    fan_in = scale if scale is not None else shape[0]
    value = (jax.random.normal(rngs.params(), shape, jnp.float32) / math.sqrt(fan_in)).astype(dt)
  return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
  """RMSNorm over the last axis (hidden_size, or head_dim for q/k norms), scaled by
  (cfg.norm_offset + weight) in float32."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, size: int | None = None,
               axis_name: str = 'norm'):
    size = size or cfg.hidden_size
    if cfg.norm_offset:  # stored as weight - offset: starts at 0
      self.scale = nnx.Param(jnp.zeros((size,), to_dtype(cfg.param_dtype)), logical_axes=(axis_name,))
    else:
      self.scale = param(rngs, (size,), (axis_name,), cfg, ones=True)
    self.eps, self.offset = cfg.rms_norm_eps, cfg.norm_offset

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * (self.offset + self.scale[...].astype(jnp.float32))).astype(x.dtype)


ROPE_TYPES = ('default', 'linear', 'llama3')


def rope_frequencies(cfg: ModelConfig, layer_type: str = 'full') -> jax.Array:
  """Inverse frequencies [D/2] of a layer: for 'full' layers with the checkpoint's `rope_scaling`
  (Llama-3 or linear); 'sliding' layers use rope_local_theta unscaled when the config sets it."""
  local = layer_type == 'sliding' and cfg.rope_local_theta
  theta = cfg.rope_local_theta if local else cfg.rope_theta
  inv = 1.0 / (theta ** (jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim))
  if not cfg.rope_scaling or local:
    return inv
  rs = dict(cfg.rope_scaling)
  kind = rs.get('rope_type', rs.get('type'))
  if kind in (None, 'default'):
    return inv
  if kind not in ROPE_TYPES:
    raise UserError(f'rope_scaling type {kind!r} is not supported (supported: {ROPE_TYPES}).')
  if kind == 'linear':
    return inv / rs['factor']
  factor, lo, hi = rs['factor'], rs['low_freq_factor'], rs['high_freq_factor']
  old = rs['original_max_position_embeddings']
  wavelen = 2 * math.pi / inv
  smooth = (old / wavelen - lo) / (hi - lo)
  scaled = jnp.where(wavelen > old / lo, inv / factor, inv)
  mid = (1 - smooth) * inv / factor + smooth * inv
  is_mid = (wavelen <= old / lo) & (wavelen >= old / hi)
  return jnp.where(is_mid, mid, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotary embedding in the Hugging Face (rotate-half) layout. x: [B, T, N, D]; positions: [B, T]."""
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [..., E] @ w [E, F], with the weight gradient written as a contraction over the tokens of
  x and dy as they are laid out (autodiff's transposed form made XLA on CPU copy the wide output
  gradient into a transposed layout first, a slow strided write per projection). Each product goes
  through `dots` (bfloat16 through the CPU's bfloat16 kernels where it has them)."""
  return dots.matmul(x, w)


def _matmul_fwd(x, w):
  return dots.matmul(x, w), (x, w)


def _matmul_bwd(res, dy):
  x, w = res
  dw = dots.einsum('me,mf->ef', x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]))
  return dots.matmul(dy, w.T), dw


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _proj(x: jax.Array, w: jax.Array) -> jax.Array:
  """A projection matmul whose output the 'dots' remat policy keeps."""
  return checkpoint_name(matmul(x, w), 'proj')


def _project(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [B, T, E] @ w [E, N, D] -> [B, T, N, D], as a plain 2-D matmul on the reshaped weight."""
  e, n, d = w.shape
  return _proj(x, w.reshape(e, n * d)).reshape(*x.shape[:-1], n, d)


def _adapted(module: nnx.Module, target: str, x: jax.Array, y: jax.Array) -> jax.Array:
  """A projection's output y plus its LoRA adapter's on the same input x (y as it is without)."""
  d = lora.delta(module, target, x, module.cfg)
  return y if d is None else y + d.reshape(y.shape).astype(y.dtype)


def soft_cap(x: jax.Array, cap: float) -> jax.Array:
  return cap * jnp.tanh(x / cap) if cap else x


class Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.q = param(rngs, (e, h, d), ('embed', 'heads', 'head_dim'), cfg)
    self.k = param(rngs, (e, k, d), ('embed', 'kv_heads', 'head_dim'), cfg)
    self.v = param(rngs, (e, k, d), ('embed', 'kv_heads', 'head_dim'), cfg)
    self.o = param(rngs, (h, d, e), ('heads', 'head_dim', 'embed'), cfg, scale=h * d)
    for name, n, axis in (('q', h, 'heads'), ('k', k, 'kv_heads'), ('v', k, 'kv_heads')):
      lora.add(self, name, cfg, rngs, (e,), ('embed',), (n, d), (axis, 'head_dim'))
    lora.add(self, 'o', cfg, rngs, (h, d), ('heads', 'head_dim'), (e,), ('embed',))
    if cfg.attention_bias:
      zeros = lambda n, axis: nnx.Param(jnp.zeros((n, d), to_dtype(cfg.param_dtype)),
                                        logical_axes=(axis, 'head_dim'))
      self.q_bias, self.k_bias, self.v_bias = zeros(h, 'heads'), zeros(k, 'kv_heads'), zeros(k, 'kv_heads')
    if cfg.qk_norm:
      self.q_norm = RMSNorm(cfg, rngs, d, 'head_dim')
      self.k_norm = RMSNorm(cfg, rngs, d, 'head_dim')
    self.cfg = cfg
    self.scale = (cfg.query_pre_attn_scalar or d) ** -0.5

  def project(self, x, positions, inv_freq):
    """x: [B, T, E] -> q [B, T, H, D], k and v [B, K, T, D], rotary embedding applied."""
    cfg = self.cfg
    dt, rules = to_dtype(cfg.dtype), cfg.logical_axis_rules
    q, k, v = (_adapted(self, name, x, _project(x, getattr(self, name)[...].astype(dt)))
               for name in ('q', 'k', 'v'))
    if cfg.attention_bias:
      q, k, v = (y + b[...].astype(dt) for y, b in ((q, self.q_bias), (k, self.k_bias), (v, self.v_bias)))
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q = shd.constrain(apply_rope(q, positions, inv_freq), ('batch', 'length', 'act_heads', None), rules)
    kv_axes = ('batch', 'act_kv_heads', 'length', None)
    k = shd.constrain(apply_rope(k, positions, inv_freq).transpose(0, 2, 1, 3), kv_axes, rules)
    return q, k, shd.constrain(v.transpose(0, 2, 1, 3), kv_axes, rules)

  def _scores(self, scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Raw q.k [B, K, G, T, S] -> scaled, soft-capped, masked float32 scores."""
    scores = soft_cap(scores.astype(jnp.float32) * self.scale, self.cfg.attn_softcap)
    return jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)

  def attend(self, q, k, v, mask):
    """q [B, T, H, D] over k and v [B, K, S, D]; mask [B, T, S] (True = may attend) -> [B, T, E]."""
    dt = to_dtype(self.cfg.dtype)
    b, t, h, d = q.shape
    kvh = k.shape[1]
    g = h // kvh
    # The G query heads of a key/value head as G x T rows of one matmul per (batch, kv head):
    # scores and probabilities stay [B, K, G*T, S] in the layout both matmuls read (grouping the
    # heads as a batch axis made XLA transpose the [B, K, G, T, S] probabilities before p.v).
    rows = q.reshape(b, t, kvh, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kvh, g * t, d)
    scores = jnp.einsum('bkqd,bksd->bkqs', rows, k.astype(dt)).reshape(b, kvh, g, t, -1)
    probs = jax.nn.softmax(self._scores(scores, mask), axis=-1).astype(dt)
    out = jnp.einsum('bkqs,bksd->bkqd', probs.reshape(b, kvh, g * t, -1), v.astype(dt))
    return self.output(out.reshape(b, kvh, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d))

  def kernel(self) -> str:
    """The kernel of this model's full-sequence attention (models.attention.resolve)."""
    return attention.resolve(self.cfg.attention, softcap=self.cfg.attn_softcap)

  def attend_fused(self, q, k, v, valid, sliding):
    """`attend` through the fused kernel: causal over each row's real tokens (valid [B, T], one
    contiguous run), within the sliding window when `sliding` (a Python bool, or a traced one in a
    layer scan: both variants compiled, one run) -> [B, T, E]."""
    cfg = self.cfg
    run = lambda window: attention.fused(self.kernel(), q, k, v, valid, scale=self.scale,
                                         softcap=cfg.attn_softcap, window=window,
                                         rules=cfg.logical_axis_rules)
    if isinstance(sliding, bool) or not cfg.sliding_window:
      out = run(cfg.sliding_window if sliding is True else 0)
    else:
      out = jax.lax.cond(sliding, lambda: run(cfg.sliding_window), lambda: run(0))
    return self.output(out.astype(to_dtype(cfg.dtype)))

  def attend_cache(self, q, k_cache, v_cache, mask):
    """Decode: q [B, T, H, D] (T small) over k_cache [B, K, D, S] and v_cache [B, K, S, D]."""
    dt = to_dtype(self.cfg.dtype)
    b, t, h, d = q.shape
    kvh = k_cache.shape[1]
    qg = q.reshape(b, t, kvh, h // kvh, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, D]
    scores = jnp.sum(qg[..., None] * k_cache[:, :, None, None].astype(dt), axis=4)  # [B, K, G, T, S]
    scores = self._scores(scores, mask)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    out = jnp.sum(probs[..., None] * v_cache[:, :, None, None].astype(dt), axis=4)  # [B, K, G, T, D]
    return self.output(out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d))

  def output(self, out):
    """Attention output [B, T, H, D] -> [B, T, E] through the output projection."""
    dt = to_dtype(self.cfg.dtype)
    b, t, h, d = out.shape
    out = shd.constrain(out, ('batch', 'length', 'act_heads', None), self.cfg.logical_axis_rules)
    # As one [B*T, H*D] x [H*D, E] matmul: an einsum over (h, d) let XLA re-lay out the weight.
    flat = out.reshape(b, t, h * d)
    return _adapted(self, 'o', flat, _proj(flat, self.o[...].astype(dt).reshape(h * d, -1)))


ACTIVATION_FNS = {
    'silu': jax.nn.silu,
    'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
}


class MLP(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    e, m = cfg.hidden_size, cfg.intermediate_size
    self.gate = param(rngs, (e, m), ('embed', 'mlp'), cfg)
    self.up = param(rngs, (e, m), ('embed', 'mlp'), cfg)
    self.down = param(rngs, (m, e), ('mlp', 'embed'), cfg)
    for name, i, o in (('gate', (e, 'embed'), (m, 'mlp')), ('up', (e, 'embed'), (m, 'mlp')),
                       ('down', (m, 'mlp'), (e, 'embed'))):
      lora.add(self, name, cfg, rngs, (i[0],), (i[1],), (o[0],), (o[1],))
    self.cfg = cfg

  def __call__(self, x):
    dt = to_dtype(self.cfg.dtype)
    gate = _adapted(self, 'gate', x, _proj(x, self.gate[...].astype(dt)))
    h = ACTIVATION_FNS[self.cfg.activation](gate) * _adapted(self, 'up', x,
                                                             _proj(x, self.up[...].astype(dt)))
    h = shd.constrain(h, ('batch', 'length', 'act_mlp'), self.cfg.logical_axis_rules)
    return _adapted(self, 'down', h, _proj(h, self.down[...].astype(dt)))
