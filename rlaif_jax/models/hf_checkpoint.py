"""Hugging Face checkpoint folders in and out (config.json + safetensors + tokenizer files).

The name/layout table (`families.weight_names`, made into converters by `weight_table(cfg)`) is the
one place that says how a checkpoint's tensors map onto our parameters; loading applies it forwards
and export applies it backwards, for every family.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import jax
import numpy as np
from flax import nnx

from rlaif_jax.infra import distributed, storage
from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import families, lora, safetensors_io, stacking
from rlaif_jax.models.config import ModelConfig
from rlaif_jax.infra.errors import MissingInput, UserError

def config_from_hf(hf: Mapping[str, Any], source: str = 'config.json', **overrides) -> ModelConfig:
  """Our ModelConfig from a Hugging Face config dict (any family in `models.families`)."""
  return families.config_from_hf(hf, source, **overrides)


def config_to_hf(cfg: ModelConfig, tokenizer: Any = None) -> dict[str, Any]:
  """A config.json dict for transformers' causal-LM class of our config's family."""
  out = families.config_to_hf(cfg)
  if tokenizer is not None:
    for key in ('bos_token_id', 'eos_token_id', 'pad_token_id'):
      if getattr(tokenizer, key, None) is not None:
        out[key] = getattr(tokenizer, key)
  return out


Convert = Callable[[np.ndarray], np.ndarray]


def _layouts(cfg: ModelConfig) -> dict[str, tuple[Convert, Convert]]:
  """HF -> ours and ours -> HF for each layout `families.weight_names` names."""
  e, d = cfg.hidden_size, cfg.head_dim
  a = np.asarray
  return {
      'same': (a, a),
      'T': (lambda w: a(w).T, lambda w: a(w).T),
      'in': (lambda w: a(w).T.reshape(e, -1, d), lambda w: a(w).reshape(e, -1).T),
      'out': (lambda w: a(w).T.reshape(-1, d, e), lambda w: a(w).reshape(-1, e).T),
      'bias': (lambda w: a(w).reshape(-1, d), lambda w: a(w).reshape(-1)),
  }


def weight_table(cfg: ModelConfig, prefix: str = 'model.') -> list[tuple[str, str, Convert, Convert]]:
  """(our parameter path, HF tensor name, HF->ours, ours->HF) for every parameter."""
  layouts = _layouts(cfg)
  rows = [(ours, hf, *layouts[layout]) for ours, hf, layout in families.weight_names(cfg, prefix)]
  if cfg.scalar_head:  # {Family}ForSequenceClassification's `score` [1, E] (no bias)
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
  table = weight_table(cfg, families.weight_prefix(tensors, cfg))
  missing = [hf for ours, hf, _, _ in table if hf not in tensors and ours not in optional]
  if missing:
    shown = ', '.join(missing[:10]) + (f' ... ({len(missing)} in all)' if len(missing) > 10 else '')
    raise UserError(f'{source}: missing tensors for a {cfg.num_layers}-layer {cfg.family} model: '
                    f'{shown}.')
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
  """Our-name -> full host array for an nnx State or Module (gathers across hosts when there are
  several), one per layer also for a scanned model."""
  if isinstance(state, nnx.Module):
    state = nnx.state(state)
  arrays = dict(zip(shd.flat_names(state), distributed.to_host(jax.tree.leaves(state))))
  return stacking.per_layer(arrays)  # a scanned model's [L, ...] parameters by layer


def export_folder(state: Any, cfg: ModelConfig, folder: storage.PathLike, tokenizer: Any = None,
                  max_shard_bytes: int = 4 << 30) -> None:
  """Write params as a folder that transformers' `{Family}ForCausalLM.from_pretrained` loads (a local
  folder or a URL). Collective with several processes: all gather the weights, process 0 writes."""
  if not cfg.lm_head:
    raise UserError('This model has no LM head (a reward or value model): there is no causal LM to '
                    'export. Export the policy.')
  arrays = host_arrays(state)
  if cfg.lora_rank:  # LoRA adapters folded into their weights: a plain checkpoint
    arrays, cfg = lora.merged(arrays, cfg), cfg.replace(lora_rank=0)
  cfg = cfg.replace(scalar_head=False)  # the export is a causal LM; a scalar head stays ours
  tensors = {hf: to_hf(arrays[ours]) for ours, hf, _, to_hf in weight_table(cfg)}
  if distributed.is_writer():
    _write_folder(storage.path(folder), tensors, config_to_hf(cfg, tokenizer), tokenizer,
                  max_shard_bytes)
  distributed.barrier(f'export {folder}')


def export_peft_adapter(state: Any, cfg: ModelConfig, folder: storage.PathLike, base: str) -> None:
  """The LoRA adapters alone as a PEFT folder (adapter_config.json, adapter_model.safetensors) that
  `peft.PeftModel.from_pretrained(<the base model>, folder)` loads; `base`: the base model's folder
  or name, written as base_model_name_or_path. Collective like `export_folder`."""
  if not cfg.lora_rank:
    raise UserError('This model has no LoRA adapters (model.lora_rank=0): there is no PEFT adapter '
                    'to write.')
  tensors, config = lora.to_peft(host_arrays(state), cfg, families.weight_names(cfg, 'model.'))
  if distributed.is_writer():
    folder = storage.path(folder)
    storage.put_bytes(folder / 'adapter_model.safetensors',
                      safetensors_io.to_bytes(tensors, {'format': 'pt'}))
    storage.put_bytes(folder / 'adapter_config.json', json.dumps(
        {**config, 'base_model_name_or_path': base}, indent=1).encode())
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
  ends = list(getattr(tokenizer, 'end_token_ids', None) or [])
  if ends:  # every end token, where transformers' generate and our loader read them
    generation = {k: config[k] for k in ('bos_token_id', 'pad_token_id') if k in config}
    storage.put_bytes(folder / 'generation_config.json', json.dumps(
        {**generation, 'eos_token_id': ends if len(ends) > 1 else ends[0]}, indent=1).encode())
  if tokenizer is not None:
    with tempfile.TemporaryDirectory() as tmp:  # transformers writes local files; copy them over
      tokenizer.save_pretrained(tmp)
      for name in sorted(os.listdir(tmp)):
        storage.put_bytes(folder / name, storage.path(os.path.join(tmp, name)).read_bytes())
