"""bench/accelerator.py on this CPU with tiny shapes: it runs the sampler and a GRPO update in
bfloat16 on a sharded mesh, and the model FLOPs its MFU divides agree with what XLA counts in the
programs it timed (so the MFU a GPU or TPU run prints is the model's arithmetic, not a guess)."""

import json

import pytest

from bench import accelerator
from rlaif_jax.models import families


def test_accelerator_bench_runs_and_counts_the_flops_xla_runs(tmp_path):
  out = tmp_path / 'results.json'
  # 8 prompts x 4 samples: the prefill's 8 distinct rows split over the 8 devices (fewer would be
  # repeated on several devices, which XLA counts and the model does not)
  r = accelerator.main(['--shapes', 'tiny', '--batch', '32', '--group', '4', '--prompt', '16',
                        '--new', '16', '--repeats', '1', '--mesh', 'data=2,fsdp=-1',
                        '--peak-tflops', '2', '--out', str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(r))
  assert (r['dtype'], r['param_dtype'], r['devices'], r['peak_flops']) == ('bfloat16', 'float32', 8,
                                                                             2e12)
  sampler, update = r['rows']['sampler'], r['rows']['GRPO update']
  assert (sampler['tokens'], update['tokens']) == (32 * 16, 32 * 32)
  # XLA counts a little more than the model needs, never less: norms, softmax, the optimizer, and
  # in the sampler every decode step's casts of the float32 weights to bfloat16 and its attention
  # over the whole cache
  for row, least in ((sampler, 0.75), (update, 0.9)):
    assert row['seconds'] > 0
    assert row['mfu'] == pytest.approx(row['model_flops'] / row['seconds'] / (8 * 2e12))
    assert least < row['model_flops'] / row['xla_flops'] <= 1.0, row
  # the prefill runs once per prompt: 8 of the 32 rows (with every row prefilled it would be 32)
  cfg = families.config_from_hf(accelerator.shapes()['tiny'])
  prefill_saved = accelerator.sampler_flops(cfg, 32, 1, 16, 16) - sampler['model_flops']
  assert prefill_saved == pytest.approx(accelerator.forward_flops(cfg, 24, 0, 16, 1))


def test_flops_count_causal_and_sliding_attention():
  cfg = families.config_from_hf(dict(
      vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
      num_attention_heads=2, num_key_value_heads=1, head_dim=4, sliding_window=2,
      layer_types=['sliding_attention', 'full_attention'], model_type='gemma3_text'))
  weights = 8 * 4 * (2 * 2 + 2 * 1) + 3 * 8 * 16  # q, k, v, o and the gated MLP
  # 3 tokens attend 1, 2, 3 keys in the full layer and 1, 2, 2 in the sliding one
  attention = 4 * 2 * 4 * ((1 + 2 + 3) + (1 + 2 + 2))
  assert accelerator.forward_flops(cfg, 1, 0, 3, 1) == 2 * 2 * weights * 3 + attention + 2 * 8 * 10
  assert accelerator.update_flops(cfg, 2, 1, 2) == 3 * 2 * (2 * 2 * weights * 3 + attention
                                                            + 2 * 8 * 10 * 2)
