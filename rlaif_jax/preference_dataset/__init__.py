"""The preference dataset as a TFDS array_record dataset (written and read without TensorFlow).

The labeling stage writes finished labels as JSONL chunks; `build(chunks_dir, data_dir)` turns them
into a TFDS dataset that `load(data_dir)` (or `tfds.data_source`) reads with random access for grain.
(TFDS wants its builders inside a package, hence this package.)
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import tensorflow_datasets as tfds

TEXT_FIELDS = ('prompt', 'response_a', 'response_b', 'principle', 'rationale_ab', 'rationale_ba',
               'judge')
FLOAT_FIELDS = ('p_a_better', 'p_ab', 'p_ba')
BOOL_FIELDS = ('consistent', 'skipped')


class RlaifPreferences(tfds.core.GeneratorBasedBuilder):
  """AI-labeled preference pairs: prompt, two responses, P(A better), principle, rationale, judge."""

  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, *, chunks_dir: str | None = None, **kwargs):
    self._chunks_dir = chunks_dir
    super().__init__(**kwargs)

  def _info(self):
    features = {k: tfds.features.Text() for k in TEXT_FIELDS}
    features.update({k: np.float32 for k in FLOAT_FIELDS})
    features.update({k: np.bool_ for k in BOOL_FIELDS})
    features['index'] = np.int64
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features),
                                          disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for row in read_chunks(self._chunks_dir):
      yield int(row['index']), row


def read_chunks(chunks_dir: str) -> list[dict]:
  rows = []
  for path in sorted(glob.glob(os.path.join(chunks_dir, '*.jsonl'))):
    with open(path, encoding='utf-8') as f:
      rows.extend(json.loads(line) for line in f if line.strip())
  return sorted(rows, key=lambda r: r['index'])


def build(chunks_dir: str, data_dir: str) -> str:
  """Write the TFDS dataset from the chunks; returns its directory."""
  builder = RlaifPreferences(chunks_dir=chunks_dir, data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
  return builder.data_dir


def load(dataset_dir: str, split: str = 'train'):
  """Random-access data source over a built preference dataset (for grain)."""
  return tfds.builder_from_directory(dataset_dir).as_data_source(split=split)
