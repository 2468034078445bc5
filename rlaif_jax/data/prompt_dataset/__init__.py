"""Local JSONL prompts as a TFDS array_record dataset (written and read without TensorFlow).

`build(jsonl_path, field, data_dir)` converts the file once (the dataset's version directory is
keyed by the file's content hash, so an edited file is converted again) and `load(dir)` reads it with
random access for grain, the same way as any TFDS dataset. (TFDS wants builders inside a package.)
"""

from __future__ import annotations

import hashlib
import json
import os

import tensorflow_datasets as tfds
from etils import epath


class RlaifPrompts(tfds.core.GeneratorBasedBuilder):
  """Prompts from a local JSONL file: one `prompt` string per example, in file order."""

  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, *, jsonl_path: str | None = None, field: str = 'prompt', **kwargs):
    self._jsonl_path, self._field = jsonl_path, field
    super().__init__(**kwargs)

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({'prompt': tfds.features.Text()}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    text = epath.Path(self._jsonl_path).read_text(encoding='utf-8')
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    for i, row in enumerate(rows):
      yield i, {'prompt': row[self._field]}


def build(jsonl_path: str, field: str, data_dir: str) -> str:
  """Convert (once per file content and field) and return the dataset directory."""
  digest = hashlib.sha256(epath.Path(jsonl_path).read_bytes() + field.encode()).hexdigest()[:16]
  builder = RlaifPrompts(jsonl_path=jsonl_path, field=field,
                         data_dir=os.path.join(data_dir, digest), file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
  return builder.data_dir


def load(dataset_dir: str, split: str = 'train'):
  return tfds.builder_from_directory(dataset_dir).as_data_source(split=split)
