"""The labeling stage: sampled pairs labeled by the judge into a TFDS dataset, resumable after a crash."""

import jax
import numpy as np
import pytest

from rlaif_jax import judge, labeling, pretrained, preference_dataset, sampling
from rlaif_jax import sharding as shd

PROMPTS = [f'the cat sat on the mat {i} times ?' for i in range(10)]


@pytest.fixture(scope='module')
def tiny(tiny_hf_folder):
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  model, tok = pretrained.load_model(tiny_hf_folder, mesh)
  j = judge.Judge(model, tok, mesh, judge.JudgeConfig(task='helpful', prompt_buckets=(256, 512)),
                  name='tiny-judge')
  policy = sampling.TextGenerator(model, tok, mesh, prompt_buckets=(64,))
  return j, policy


def _run(tmp, tiny, crash_after=None):
  j, policy = tiny
  calls = {'n': 0}
  original = j.pairwise

  def flaky(*a, **kw):
    calls['n'] += 1
    if crash_after is not None and calls['n'] > crash_after:
      raise RuntimeError('simulated crash')
    return original(*a, **kw)

  j.pairwise = flaky
  try:
    return labeling.label(j, PROMPTS, str(tmp), jax.random.key(0), policy=policy,
                          response_settings=sampling.SamplingConfig(6, temperature=1.0),
                          batch_size=4, constitution=['Be kind.', 'Be brief.', 'Be right.'],
                          seed=1, progress=False)
  finally:
    j.pairwise = original


def _rows(path):
  ds = preference_dataset.load(path)
  return [ds[i] for i in range(len(ds))]


def test_labeling_writes_a_tfds_dataset(tmp_path, tiny):
  rows = _rows(_run(tmp_path, tiny))
  assert [int(r['index']) for r in rows] == list(range(len(PROMPTS)))
  assert all(0 < r['p_a_better'] < 1 for r in rows)
  assert {r['principle'].decode() for r in rows} <= {'Be kind.', 'Be brief.', 'Be right.'}
  assert rows[0]['judge'] == b'tiny-judge' and rows[3]['prompt'].decode() == PROMPTS[3]
  assert any(r['response_a'] != r['response_b'] for r in rows)  # two independent samples


def test_crash_mid_way_then_resume_gives_the_same_dataset(tmp_path, tiny):
  expected = _rows(_run(tmp_path / 'straight', tiny))
  with pytest.raises(RuntimeError, match='simulated crash'):
    _run(tmp_path / 'resumed', tiny, crash_after=2)
  chunks = sorted(p.name for p in (tmp_path / 'resumed' / 'label_chunks').iterdir())
  assert chunks == ['000000.jsonl', '000001.jsonl']  # finished batches kept, nothing half-written
  got = _rows(_run(tmp_path / 'resumed', tiny))
  assert len(got) == len(expected)
  for g, e in zip(got, expected):
    assert g.keys() == e.keys()
    for k in g:
      np.testing.assert_array_equal(g[k], e[k], err_msg=k)
