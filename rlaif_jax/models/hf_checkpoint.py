"""Hugging Face checkpoint folders in and out (config.json + safetensors + tokenizer files).

The name/layout table `weight_table(cfg)` is the one place that says how a `LlamaForCausalLM` tensor
maps onto our parameters; loading applies it forwards and export applies it backwards.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import jax
import numpy as np

from rlaif_jax.infra import distributed, storage
from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import safetensors_io
from rlaif_jax.models.config import ModelConfig
from rlaif_jax.infra.errors import MissingInput, UserError

SUPPORTED_ARCHITECTURES = ('LlamaForCausalLM', 'LlamaForSequenceClassification')
SUPPORTED_MODEL_TYPES = ('llama',)


def config_from_hf(hf: Mapping[str, Any], source: str = 'config.json', **overrides) -> ModelConfig:
  """Our ModelConfig from a Hugging Face config dict; a clear error for what we cannot run."""
  model_type = hf.get('model_type')
  archs = hf.get('architectures') or []
  if model_type not in SUPPORTED_MODEL_TYPES or (archs and not set(archs) & set(SUPPORTED_ARCHITECTURES)):
    raise UserError(f'{source}: unsupported architecture (model_type={model_type!r}, '
                    f'architectures={archs}); rlaif_jax supports {SUPPORTED_ARCHITECTURES} '
                    f'(model_type {SUPPORTED_MODEL_TYPES}).')
  for flag in ('attention_bias', 'mlp_bias'):
    if hf.get(flag):
      raise UserError(f'{source}: {flag}=true is not supported by the Llama-family model.')
  if hf.get('hidden_act', 'silu') != 'silu':
    raise UserError(f'{source}: hidden_act={hf["hidden_act"]!r} is not supported (only silu).')
  missing = [k for k in ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
                         'num_attention_heads') if k not in hf]
  if missing:
    raise UserError(f'{source} lacks required keys {missing}.')
  rope = dict(hf.get('rope_parameters') or {})  # transformers 5 layout
  rope_theta = rope.pop('rope_theta', hf.get('rope_theta', 10000.0))
  scaling = rope or dict(hf.get('rope_scaling') or {})
  if scaling.get('rope_type', scaling.get('type', 'default')) == 'default':
    scaling = {}
  heads = hf['num_attention_heads']
  kw = dict(
      vocab_size=hf['vocab_size'], hidden_size=hf['hidden_size'],
      intermediate_size=hf['intermediate_size'], num_layers=hf['num_hidden_layers'],
      num_heads=heads, num_kv_heads=hf.get('num_key_value_heads') or heads,
      head_dim=hf.get('head_dim') or hf['hidden_size'] // heads, rope_theta=float(rope_theta),
      rope_scaling=tuple(sorted(scaling.items())) or None, rms_norm_eps=hf.get('rms_norm_eps', 1e-6),
      tie_word_embeddings=bool(hf.get('tie_word_embeddings', False)),
      max_position_embeddings=hf.get('max_position_embeddings', 2048))
  kw.update(overrides)
  return ModelConfig(**kw)


def config_to_hf(cfg: ModelConfig, tokenizer: Any = None) -> dict[str, Any]:
  """A `LlamaForCausalLM` config.json dict for our config."""
  rope = {'rope_theta': cfg.rope_theta, 'rope_type': 'default'}
  if cfg.rope_scaling:
    rope.update(dict(cfg.rope_scaling))
  out = {
      'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', 'vocab_size': cfg.vocab_size,
      'hidden_size': cfg.hidden_size, 'intermediate_size': cfg.intermediate_size,
      'num_hidden_layers': cfg.num_layers, 'num_attention_heads': cfg.num_heads,
      'num_key_value_heads': cfg.num_kv_heads, 'head_dim': cfg.head_dim, 'hidden_act': 'silu',
      'max_position_embeddings': cfg.max_position_embeddings, 'rms_norm_eps': cfg.rms_norm_eps,
      'rope_theta': cfg.rope_theta, 'rope_parameters': rope,
      'tie_word_embeddings': cfg.tie_word_embeddings, 'attention_bias': False, 'mlp_bias': False,
      'torch_dtype': cfg.param_dtype, 'dtype': cfg.param_dtype,
  }
  if tokenizer is not None:
    for key in ('bos_token_id', 'eos_token_id', 'pad_token_id'):
      if getattr(tokenizer, key, None) is not None:
        out[key] = getattr(tokenizer, key)
  return out


Convert = Callable[[np.ndarray], np.ndarray]


def weight_table(cfg: ModelConfig) -> list[tuple[str, str, Convert, Convert]]:
  """(our parameter path, HF tensor name, HF->ours, ours->HF) for every parameter."""
  e, h, k, d, = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  same = lambda w: w
  t = lambda w: np.asarray(w).T
  rows = [('embed', 'model.embed_tokens.weight', same, same),
          ('final_norm/scale', 'model.norm.weight', same, same)]
  if not cfg.tie_word_embeddings:
    rows.append(('lm_head', 'lm_head.weight', t, t))
  for i in range(cfg.num_layers):
    p, q = f'layers/{i}/', f'model.layers.{i}.'
    rows += [
        (p + 'attn_norm/scale', q + 'input_layernorm.weight', same, same),
        (p + 'mlp_norm/scale', q + 'post_attention_layernorm.weight', same, same),
        (p + 'attn/q', q + 'self_attn.q_proj.weight',
         lambda w: t(w).reshape(e, h, d), lambda w: np.asarray(w).reshape(e, h * d).T),
        (p + 'attn/k', q + 'self_attn.k_proj.weight',
         lambda w: t(w).reshape(e, k, d), lambda w: np.asarray(w).reshape(e, k * d).T),
        (p + 'attn/v', q + 'self_attn.v_proj.weight',
         lambda w: t(w).reshape(e, k, d), lambda w: np.asarray(w).reshape(e, k * d).T),
        (p + 'attn/o', q + 'self_attn.o_proj.weight',
         lambda w: t(w).reshape(h, d, e), lambda w: np.asarray(w).reshape(h * d, e).T),
        (p + 'mlp/gate', q + 'mlp.gate_proj.weight', t, t),
        (p + 'mlp/up', q + 'mlp.up_proj.weight', t, t),
        (p + 'mlp/down', q + 'mlp.down_proj.weight', t, t),
    ]
  if cfg.scalar_head:  # LlamaForSequenceClassification's `score` [1, E] (no bias)
    rows.append(('scalar_head', 'score.weight', lambda w: np.asarray(w).reshape(-1),
                 lambda w: np.asarray(w).reshape(1, -1)))
  return rows


class LazyWeights(Mapping):
  """Name -> host array, made from its source only when asked for (one at a time)."""

  def __init__(self, items: dict[str, Callable[[], np.ndarray]]):
    self._items = items

  def __getitem__(self, name: str) -> np.ndarray:
    return self._items[name]()

  def __contains__(self, name: object) -> bool:  # without reading the tensor
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(self._items)

  def __len__(self) -> int:
    return len(self._items)


def map_weights(cfg: ModelConfig, tensors: Mapping[str, np.ndarray], source: str,
                optional: tuple[str, ...] = ('scalar_head', 'scalar_bias')) -> LazyWeights:
  """Apply the weight table to source tensors (HF names); list every missing tensor in one error."""
  table = weight_table(cfg)
  missing = [hf for ours, hf, _, _ in table if hf not in tensors and ours not in optional]
  if missing:
    shown = ', '.join(missing[:10]) + (f' ... ({len(missing)} in all)' if len(missing) > 10 else '')
    raise UserError(f'{source}: missing tensors for a {cfg.num_layers}-layer Llama model: {shown}.')
  items = {}
  for ours, hf, to_ours, _ in table:
    if hf in tensors:
      items[ours] = (lambda f=to_ours, n=hf: np.asarray(f(tensors[n])))
  if cfg.scalar_head:  # a fresh head starts at zero output unless the checkpoint has one
    items.setdefault('scalar_head', lambda: np.zeros((cfg.hidden_size,), np.float32))
    items.setdefault('scalar_bias', lambda: np.zeros((), np.float32))
  return LazyWeights(items)


def read_tensors(folder: str) -> Mapping[str, np.ndarray]:
  """All tensors of a folder's `model.safetensors` or sharded `model-*.safetensors` + index, by
  name; each is read from its file when asked for."""
  index = os.path.join(folder, 'model.safetensors.index.json')
  single = os.path.join(folder, 'model.safetensors')
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)['weight_map']
    files = {}
    for shard in sorted(set(weight_map.values())):
      path = os.path.join(folder, shard)
      if not os.path.exists(path):
        raise MissingInput(f'{index} lists {shard}, which is not in {folder}.')
      files[shard] = safetensors_io.read(path)
    return LazyWeights({name: (lambda f=files[shard], n=name: f[n])
                        for shard, f in files.items() for name in f})
  if os.path.exists(single):
    return safetensors_io.read(single)
  present = sorted(os.listdir(folder))
  bad = [p for p in present if p.endswith(('.bin', '.pt', '.pth', '.ckpt'))]
  hint = (f' It has {bad}: pickle checkpoints are never loaded; convert them to safetensors.'
          if bad else '')
  raise MissingInput(f'{folder} has no model.safetensors or model.safetensors.index.json.{hint}')


def load_folder(folder: str, **overrides) -> tuple[ModelConfig, LazyWeights]:
  """(ModelConfig, our-name -> host array) from a Hugging Face checkpoint folder."""
  cfg_path = os.path.join(folder, 'config.json')
  if not os.path.isdir(folder):
    raise MissingInput(f'Checkpoint folder {folder} does not exist.')
  if not os.path.exists(cfg_path):
    raise MissingInput(f'{folder} has no config.json; is it a Hugging Face checkpoint folder?')
  with open(cfg_path) as f:
    cfg = config_from_hf(json.load(f), cfg_path, **overrides)
  return cfg, map_weights(cfg, read_tensors(folder), folder)


def host_arrays(state: Any) -> dict[str, np.ndarray]:
  """Our-name -> full host array for an nnx State (gathers across hosts when there are several)."""
  return dict(zip(shd.flat_names(state), distributed.to_host(jax.tree.leaves(state))))


def export_folder(state: Any, cfg: ModelConfig, folder: storage.PathLike, tokenizer: Any = None,
                  max_shard_bytes: int = 4 << 30) -> None:
  """Write params as a folder that transformers' `LlamaForCausalLM.from_pretrained` loads (a local
  folder or a URL). Collective with several processes: all gather the weights, process 0 writes."""
  arrays = host_arrays(state)
  cfg = cfg.replace(scalar_head=False)  # the export is a causal LM; a scalar head stays ours
  tensors = {hf: to_hf(arrays[ours]) for ours, hf, _, to_hf in weight_table(cfg)}
  if distributed.is_writer():
    _write_folder(storage.path(folder), tensors, config_to_hf(cfg, tokenizer), tokenizer,
                  max_shard_bytes)
  distributed.barrier(f'export {folder}')


def _write_folder(folder, tensors: dict[str, np.ndarray], config: dict, tokenizer: Any,
                  max_shard_bytes: int) -> None:
  shards, current, size = [], {}, 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensors[name]
    size += nbytes
  shards.append(current)
  meta = {'format': 'pt'}
  if len(shards) == 1:
    storage.put_bytes(folder / 'model.safetensors', safetensors_io.to_bytes(shards[0], meta))
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      fname = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
      storage.put_bytes(folder / fname, safetensors_io.to_bytes(shard, meta))
      weight_map.update({n: fname for n in shard})
    total = sum(t.nbytes for t in tensors.values())
    storage.put_bytes(folder / 'model.safetensors.index.json', json.dumps(
        {'metadata': {'total_size': total}, 'weight_map': weight_map}, indent=1).encode())
  storage.put_bytes(folder / 'config.json', json.dumps(config, indent=1).encode())
  if tokenizer is not None:
    with tempfile.TemporaryDirectory() as tmp:  # transformers writes local files; copy them over
      tokenizer.save_pretrained(tmp)
      for name in sorted(os.listdir(tmp)):
        storage.put_bytes(folder / name, storage.path(os.path.join(tmp, name)).read_bytes())
