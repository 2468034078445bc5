"""Prompts for the pipeline: where they come from, the train / held-out split, and grain batches.

`config.data.source` is one of
  - `inline`: the strings in `config.data.prompts`;
  - `chatterbot`: the first turn of every English conversation shipped in the PyPI package
    `chatterbot-corpus` (real, offline dialogue openers);
  - a path to a local `.jsonl` file, one JSON object per line with the prompt in
    `config.data.prompt_field`; it is converted once into a TFDS array_record dataset in the workdir
    (`data.prompt_dataset`) and read back with `tfds.data_source`;
  - `tfds:NAME[:SPLIT]`: any TFDS dataset already prepared in `config.data.tfds_data_dir`, including
    the `huggingface:` namespace, read with `tfds.data_source` (no TensorFlow).
Prompts are de-duplicated, stripped, optionally cut to `max_prompts`, then split deterministically
(by `seed`) into train and held-out sets. RL batches come from a grain dataset (shuffle, repeat,
batch) whose iterator state goes into the RL checkpoints.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
from typing import Any, Sequence

import grain
import jax
import numpy as np

from rlaif_jax.infra import distributed, storage
from rlaif_jax.infra.errors import MissingInput, UserError


def chatterbot_prompts() -> list[str]:
  spec = importlib.util.find_spec('chatterbot_corpus')
  if spec is None:
    raise MissingInput("data.source='chatterbot' needs the PyPI package chatterbot-corpus: "
                       "pip install chatterbot-corpus (launch/setup.sh installs it).")
  import yaml
  folder = os.path.join(spec.submodule_search_locations[0], 'data', 'english')
  prompts = []
  for path in sorted(glob.glob(os.path.join(folder, '*.yml'))):
    with open(path, encoding='utf-8') as f:
      doc = yaml.safe_load(f) or {}
    for conversation in doc.get('conversations') or []:
      if conversation and isinstance(conversation[0], str):
        prompts.append(conversation[0])
  return prompts


def read_jsonl(path: str, field: str) -> list[str]:
  """The `field` of every row; a malformed row is an error naming its line."""
  if not storage.exists(path):
    raise MissingInput(f'Prompt file {path} does not exist; fix config.data.source.')
  out = []
  with storage.path(path).open(encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f'{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object '
                        f'like {{"{field}": "..."}}.') from None
      if not isinstance(row, dict) or not isinstance(row.get(field), str):
        raise UserError(f'{path}:{n}: no string field {field!r}; set config.data.prompt_field to '
                        f'the field that holds the prompt.')
      out.append(row[field])
  return out


TFDS_NAMESPACES = ('huggingface', 'kaggle')


def tfds_source(source: str, data_dir: str) -> Any:
  """`tfds:NAME[:SPLIT]` as a random-access TFDS data source, prepared already (never downloaded
  here). One that cannot be read is a short error with the fix, in seconds: TFDS's `huggingface:`
  namespace is tried only when the `datasets` package is installed and huggingface.co answers."""
  parts = source[len('tfds:'):].split(':')
  namespaced = len(parts) == 3 or (len(parts) == 2 and parts[0] in TFDS_NAMESPACES)
  name = ':'.join(parts[:2]) if namespaced else parts[0]
  split = parts[2 if namespaced else 1] if len(parts) > (2 if namespaced else 1) else 'train'
  fix = ("; prepare the prompts once as a JSONL file (README: 'Prompts for a pod run') and set "
         "--config.data.source=PATH.jsonl (a local path or a gs:// URL)")
  if name.startswith('huggingface:') and not _reachable_hub():
    raise MissingInput(f'config.data.source={source!r} cannot be read here: TFDS\'s huggingface '
                       f'namespace needs the datasets package (pip install datasets) and access to '
                       f'huggingface.co, which this machine lacks{fix}.')
  import tensorflow_datasets as tfds
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception as e:  # noqa: BLE001 -- TFDS raises many kinds, some with every dataset's name
    reason = ' '.join(str(e).split('Available datasets')[0].split())[:160]
    raise MissingInput(f'config.data.source={source!r} cannot be read here ({type(e).__name__}: '
                       f'{reason}){fix}.') from e


def _reachable_hub(timeout: float = 3.0) -> bool:
  import importlib.util
  import socket
  if importlib.util.find_spec('datasets') is None or os.environ.get('HF_HUB_OFFLINE') == '1':
    return False
  try:
    socket.create_connection(('huggingface.co', 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def _decode(x: Any) -> str:
  return x.decode('utf-8') if isinstance(x, bytes) else str(x)


def load_prompts(data: Any, workdir: storage.PathLike) -> list[str]:
  """All prompts of `config.data` (see the module docstring), de-duplicated in order. Collective with
  several processes (process 0 converts a JSONL file; all read it)."""
  source = data.source
  if source == 'inline':
    prompts = list(data.prompts)
  elif source == 'chatterbot':
    prompts = chatterbot_prompts()
  elif source.startswith('tfds:'):
    ds = tfds_source(source, data.tfds_data_dir)
    prompts = [_decode(ds[i][data.prompt_field]) for i in range(len(ds))]
  elif source.endswith('.jsonl'):
    from rlaif_jax.data import prompt_dataset
    rows = read_jsonl(source, data.prompt_field)  # validates every row before building
    if not rows:
      raise UserError(f'Prompt file {source} has no prompts; add rows like '
                      f'{{"{data.prompt_field}": "..."}}.')
    ds = prompt_dataset.load(build_once(source, data.prompt_field, workdir))
    prompts = [_decode(ds[i]['prompt']) for i in range(len(ds))]
  else:
    raise UserError(f"Unknown config.data.source {source!r}; use 'inline', 'chatterbot', a .jsonl "
                    f"path or 'tfds:NAME[:SPLIT]'.")
  seen, out = set(), []
  for p in prompts:
    p = p.strip()
    if p and p not in seen:
      seen.add(p)
      out.append(p)
  if not out:
    raise UserError(f'No prompts in config.data.source={source!r}; it is empty.')
  return out[:data.max_prompts] if data.max_prompts > 0 else out


def build_once(source: str, field: str, workdir: storage.PathLike) -> str:
  """The JSONL file's TFDS dataset directory, in the workdir: process 0 converts it while the others
  wait, then they open the finished one. With a workdir in a bucket it goes in each process's local
  cache instead (TFDS writes local files)."""
  from rlaif_jax.data import prompt_dataset
  if storage.is_url(workdir):
    cache = os.path.join(os.path.expanduser('~'), '.cache', 'rlaif_jax', 'prompts',
                         f'process_{jax.process_index()}')
    return prompt_dataset.build(source, field, cache)
  data_dir = os.fspath(storage.path(workdir) / 'data')
  if distributed.is_writer():
    prompt_dataset.build(source, field, data_dir)
  distributed.barrier('prompt dataset')
  return prompt_dataset.build(source, field, data_dir)  # prepared already: only opened


def split(prompts: Sequence[str], num_heldout: int, seed: int) -> tuple[list[str], list[str]]:
  """(train, held-out): a seeded shuffle, the last `num_heldout` held out."""
  if not 0 <= num_heldout < len(prompts):
    raise UserError(f'config.data.num_heldout={num_heldout} must be in [0, {len(prompts)}) for '
                     f'{len(prompts)} prompts.')
  order = np.random.default_rng(seed).permutation(len(prompts))
  shuffled = [prompts[i] for i in order]
  cut = len(prompts) - num_heldout
  return shuffled[:cut], shuffled[cut:]


def batches(prompts: Sequence[str], batch_size: int, seed: int) -> grain.DatasetIterator:
  """An endless iterator of prompt batches (lists of strings), reshuffled every epoch; its
  `get_state()` / `set_state()` are what the RL checkpoints save and restore."""
  if batch_size > len(prompts):
    raise UserError(f'Batch of {batch_size} prompts but only {len(prompts)} train prompts; lower '
                    f'the batch size or add prompts.')
  ds = grain.MapDataset.source(list(prompts)).shuffle(seed=seed).repeat()
  return iter(ds.batch(batch_size, batch_fn=list).to_iter_dataset())
