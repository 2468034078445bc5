"""The model families we load, in one table: how a Hugging Face config.json (`model_type`) becomes
the switches of our one transformer, and how each family names its tensors.

| family      | what differs from Llama                                                          |
|-------------|----------------------------------------------------------------------------------|
| llama       | (the base: Llama 2/3.x, SmolLM2)                                                 |
| qwen2       | q/k/v biases; sliding window on layers >= max_window_layers when enabled         |
| qwen3       | q/k RMSNorm over head_dim; head_dim given; optional attention biases              |
| mistral     | sliding-window attention on every layer when sliding_window is set               |
| gemma2      | (1 + w) norms, sqrt(E) embedding scale, GeGLU (tanh), norms around both sublayers, |
|             | attention and logit soft-capping, alternating local/global, query_pre_attn_scalar |
| gemma3_text | as gemma2 without soft-capping, plus q/k norms and a local rotary base; 5 local : 1 |
|             | global. The multimodal `gemma3` folders load their language model (text_config). |

A config.json key that asks for something the transformer does not do is a clear error naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rlaif_jax.infra.errors import UserError
from rlaif_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Family:
  model_type: str
  prefix: str  # class-name prefix: {prefix}ForCausalLM, {prefix}ForSequenceClassification
  switches: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # fixed by the family
  gemma_norms: bool = False  # input / post_attention / pre_feedforward / post_feedforward norms
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # of absent config keys


_GEMMA = dict(norm_offset=1.0, embed_scale=True, sandwich_norms=True)
FAMILIES = {f.model_type: f for f in (
    Family('llama', 'Llama'),
    Family('qwen2', 'Qwen2', dict(attention_bias=True), defaults=dict(rms_norm_eps=1e-6)),
    Family('qwen3', 'Qwen3', dict(qk_norm=True), defaults=dict(rms_norm_eps=1e-6, head_dim=128)),
    Family('mistral', 'Mistral', defaults=dict(sliding_window=4096)),
    Family('gemma2', 'Gemma2', _GEMMA, gemma_norms=True, defaults=dict(
        rms_norm_eps=1e-6, head_dim=256, tie_word_embeddings=True, hidden_activation='gelu_pytorch_tanh',
        query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0)),
    Family('gemma3_text', 'Gemma3', dict(_GEMMA, qk_norm=True), gemma_norms=True, defaults=dict(
        rms_norm_eps=1e-6, head_dim=256, tie_word_embeddings=True, hidden_activation='gelu_pytorch_tanh',
        query_pre_attn_scalar=256, sliding_window=4096, rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0, sliding_window_pattern=6)),
)}
ACTIVATIONS = {'silu': 'silu', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_tanh': 'gelu_tanh',
               'gelu': 'gelu'}
HF_LAYER_TYPES = {'full_attention': 'full', 'sliding_attention': 'sliding'}
REQUIRED = ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
            'num_attention_heads')


def supported() -> str:
  return ', '.join(f'{f.prefix}ForCausalLM ({t})' for t, f in FAMILIES.items())


def text_config(hf: Mapping[str, Any]) -> Mapping[str, Any]:
  """The language model's config: a multimodal Gemma 3 folder nests it under text_config."""
  if hf.get('model_type') == 'gemma3' and 'text_config' in hf:
    return {'model_type': 'gemma3_text', 'tie_word_embeddings': hf.get('tie_word_embeddings', True),
            **hf['text_config']}
  return hf


def family_of(hf: Mapping[str, Any], source: str) -> Family:
  model_type = hf.get('model_type')
  archs = hf.get('architectures') or []
  family = FAMILIES.get(model_type)
  known = family and all(a.startswith(family.prefix) for a in archs)
  if not known:
    raise UserError(f'{source}: unsupported architecture (model_type={model_type!r}, '
                    f'architectures={archs}); rlaif_jax loads {supported()}.')
  return family


def _rope(hf: Mapping[str, Any], fam: Family, source: str) -> dict[str, Any]:
  """rope_theta, rope_scaling and rope_local_theta from either the transformers-5 `rope_parameters`
  (flat, or per layer type for Gemma 3) or the older rope_theta / rope_scaling keys."""
  params = dict(hf.get('rope_parameters') or {})
  if 'full_attention' in params or 'sliding_attention' in params:
    full = dict(params.get('full_attention') or {})
    local = dict(params.get('sliding_attention') or {})
  else:
    full, local = params, {}
  theta = full.pop('rope_theta', hf.get('rope_theta', fam.defaults.get('rope_theta', 10000.0)))
  scaling = full or dict(hf.get('rope_scaling') or {})
  if scaling.get('rope_type', scaling.get('type', 'default')) == 'default':
    scaling = {}
  out = dict(rope_theta=float(theta), rope_scaling=tuple(sorted(scaling.items())) or None)
  if fam.model_type == 'gemma3_text':
    if local.get('rope_type', 'default') != 'default':
      raise UserError(f'{source}: scaled rotary embeddings on sliding layers '
                      f'({local["rope_type"]!r}) are not supported.')
    out['rope_local_theta'] = float(local.get('rope_theta', hf.get(
        'rope_local_base_freq', fam.defaults['rope_local_base_freq'])))
  return out


def _layer_types(hf: Mapping[str, Any], fam: Family, window: int | None, layers: int) -> tuple:
  if window is None:
    return ()
  if hf.get('layer_types'):
    return tuple(HF_LAYER_TYPES[t] for t in hf['layer_types'])
  if fam.model_type in ('qwen2', 'qwen3'):
    first = hf.get('max_window_layers', 28)
    return tuple('sliding' if i >= first else 'full' for i in range(layers))
  if fam.model_type == 'gemma2':
    return tuple('sliding' if (i + 1) % 2 else 'full' for i in range(layers))
  if fam.model_type == 'gemma3_text':
    every = hf.get('sliding_window_pattern', fam.defaults['sliding_window_pattern'])
    return tuple('sliding' if (i + 1) % every else 'full' for i in range(layers))
  return ('sliding',) * layers  # mistral


def _refuse(hf: Mapping[str, Any], fam: Family, source: str) -> None:
  """What a folder may ask for that we do not implement: a clear error naming it."""
  asks = {'mlp_bias': hf.get('mlp_bias'),
          'use_bidirectional_attention': hf.get('use_bidirectional_attention'),
          'attention_bias': hf.get('attention_bias') and fam.model_type not in ('qwen2', 'qwen3')}
  for key, value in asks.items():
    if value:
      raise UserError(f'{source}: {key}={value!r} is not supported for {fam.model_type}.')
  if hf.get('layer_types') and set(hf['layer_types']) - set(HF_LAYER_TYPES):
    raise UserError(f'{source}: layer_types {sorted(set(hf["layer_types"]))} include kinds we do not '
                    f'implement (supported: {sorted(HF_LAYER_TYPES)}).')


def config_from_hf(hf: Mapping[str, Any], source: str = 'config.json', **overrides) -> ModelConfig:
  """Our ModelConfig from a Hugging Face config dict; a clear error for what we cannot run."""
  hf = text_config(hf)
  fam = family_of(hf, source)
  _refuse(hf, fam, source)
  missing = [k for k in REQUIRED if k not in hf]
  if missing:
    raise UserError(f'{source} lacks required keys {missing}.')
  get = lambda key, default=None: hf[key] if hf.get(key) is not None else fam.defaults.get(key, default)
  act = hf.get('hidden_activation') or hf.get('hidden_act') or fam.defaults.get('hidden_activation', 'silu')
  if act not in ACTIVATIONS:
    raise UserError(f'{source}: hidden_act={act!r} is not supported (supported: {sorted(ACTIVATIONS)}).')
  window = get('sliding_window')
  if fam.model_type in ('qwen2', 'qwen3') and not hf.get('use_sliding_window'):
    window = None
  heads, layers = hf['num_attention_heads'], hf['num_hidden_layers']
  kw = dict(fam.switches)
  kw.update(
      family=fam.model_type, vocab_size=hf['vocab_size'], hidden_size=hf['hidden_size'],
      intermediate_size=hf['intermediate_size'], num_layers=layers, num_heads=heads,
      num_kv_heads=hf.get('num_key_value_heads') or heads,
      head_dim=get('head_dim') or hf['hidden_size'] // heads, rms_norm_eps=get('rms_norm_eps', 1e-6),
      tie_word_embeddings=bool(get('tie_word_embeddings', False)),
      max_position_embeddings=hf.get('max_position_embeddings', 2048), activation=ACTIVATIONS[act],
      attn_softcap=float(get('attn_logit_softcapping') or 0.0),
      final_softcap=float(get('final_logit_softcapping') or 0.0),
      query_pre_attn_scalar=float(get('query_pre_attn_scalar') or 0.0),
      sliding_window=int(window or 0), layer_types=_layer_types(hf, fam, window, layers),
      **_rope(hf, fam, source))
  if fam.model_type == 'qwen3':
    kw['attention_bias'] = bool(hf.get('attention_bias', False))
  if kw['layer_types'] and 'sliding' not in kw['layer_types']:
    kw['layer_types'], kw['sliding_window'] = (), 0
  kw.update(overrides)
  return ModelConfig(**kw)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """A config.json dict that transformers' {Family}ForCausalLM reads as our config."""
  fam = FAMILIES[cfg.family]
  rope = {'rope_theta': cfg.rope_theta, 'rope_type': 'default'}
  if cfg.rope_scaling:
    rope.update(dict(cfg.rope_scaling))
  out = {
      'architectures': [f'{fam.prefix}ForCausalLM'], 'model_type': cfg.family,
      'vocab_size': cfg.vocab_size, 'hidden_size': cfg.hidden_size,
      'intermediate_size': cfg.intermediate_size, 'num_hidden_layers': cfg.num_layers,
      'num_attention_heads': cfg.num_heads, 'num_key_value_heads': cfg.num_kv_heads,
      'head_dim': cfg.head_dim, 'max_position_embeddings': cfg.max_position_embeddings,
      'rms_norm_eps': cfg.rms_norm_eps, 'tie_word_embeddings': cfg.tie_word_embeddings,
      'torch_dtype': cfg.param_dtype, 'dtype': cfg.param_dtype,
  }
  act = {'silu': 'silu', 'gelu_tanh': 'gelu_pytorch_tanh', 'gelu': 'gelu'}[cfg.activation]
  out['hidden_activation' if fam.gemma_norms else 'hidden_act'] = act
  if cfg.family == 'gemma3_text':
    rope = {'full_attention': rope,
            'sliding_attention': {'rope_type': 'default', 'rope_theta': cfg.rope_local_theta}}
  else:
    out['rope_theta'] = cfg.rope_theta
  out['rope_parameters'] = rope
  if cfg.family in ('llama', 'qwen3'):
    out.update(attention_bias=cfg.attention_bias, mlp_bias=False)
  if fam.gemma_norms:
    scalar = cfg.query_pre_attn_scalar or cfg.head_dim
    out.update(query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
               attn_logit_softcapping=cfg.attn_softcap or None,
               final_logit_softcapping=cfg.final_softcap or None)
  window = cfg.sliding_window or None
  types = [{'full': 'full_attention', 'sliding': 'sliding_attention'}[t]
           for t in (cfg.layer_types or ('full',) * cfg.num_layers)]
  if cfg.family in ('qwen2', 'qwen3'):
    out.update(use_sliding_window=window is not None, sliding_window=window, layer_types=types,
               max_window_layers=types.index('sliding_attention') if window else cfg.num_layers)
  elif cfg.family == 'mistral':
    if window and set(types) != {'sliding_attention'}:
      raise UserError('A Mistral export needs every layer sliding (or none).')
    out['sliding_window'] = window
  elif fam.gemma_norms:
    out.update(sliding_window=window or 4096, layer_types=types)
  return out


def weight_names(cfg: ModelConfig, prefix: str = 'model.') -> list[tuple[str, str, str]]:
  """(our parameter path, HF tensor name, layout) of every parameter; layout is how the HF tensor
  maps onto ours: 'same', 'T' (transposed linear), 'in' ([N*D, E] -> [E, N, D]), 'out'
  ([E, H*D] -> [H, D, E]) or 'bias' ([N*D] -> [N, D])."""
  fam = FAMILIES[cfg.family]
  rows = [('embed', prefix + 'embed_tokens.weight', 'same'),
          ('final_norm/scale', prefix + 'norm.weight', 'same')]
  if cfg.lm_head and not cfg.tie_word_embeddings:
    rows.append(('lm_head', 'lm_head.weight', 'T'))
  norms = {'attn_norm': 'input_layernorm'}
  if fam.gemma_norms:
    norms.update(attn_out_norm='post_attention_layernorm', mlp_norm='pre_feedforward_layernorm',
                 mlp_out_norm='post_feedforward_layernorm')
  else:
    norms['mlp_norm'] = 'post_attention_layernorm'
  for i in range(cfg.num_layers):
    p, q = f'layers/{i}/', f'{prefix}layers.{i}.'
    rows += [(p + ours + '/scale', q + theirs + '.weight', 'same') for ours, theirs in norms.items()]
    rows += [(p + f'attn/{n}', q + f'self_attn.{n}_proj.weight', 'in') for n in 'qkv']
    rows += [(p + 'attn/o', q + 'self_attn.o_proj.weight', 'out')]
    if cfg.attention_bias:
      rows += [(p + f'attn/{n}_bias', q + f'self_attn.{n}_proj.bias', 'bias') for n in 'qkv']
    if cfg.qk_norm:
      rows += [(p + f'attn/{n}_norm/scale', q + f'self_attn.{n}_norm.weight', 'same') for n in 'qk']
    rows += [(p + f'mlp/{n}', q + f'mlp.{n}_proj.weight', 'T') for n in ('gate', 'up', 'down')]
  return rows


def weight_prefix(names: Any, cfg: ModelConfig) -> str:
  """Where the decoder's tensors sit: 'model.' in a causal-LM folder; a multimodal Gemma 3 folder
  keeps them under 'model.language_model.' (transformers 5) or 'language_model.model.' (older)."""
  for prefix in ('model.', 'model.language_model.', 'language_model.model.'):
    if prefix + 'embed_tokens.weight' in names:
      return prefix
  return 'model.'
