"""Scanned layers (`model.scan_layers`): stacked [L, ...] parameters run by one lax.scan give the same
numbers as the Python loop over blocks, for every family, and the program does not grow with depth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlaif_jax.generation import sampler
from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import hf_checkpoint, loading
from rlaif_jax.models import transformer as model_lib
from tests import helpers

CFG = model_lib.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8)


@pytest.mark.parametrize('family', ['gemma2', 'gemma3', 'qwen2_tied_window', 'qwen3'])
def test_scanned_family_matches_torch_and_decodes_like_unscanned(family, tmp_path, tokenizer_dir):
  """Per-layer windows and rotary bases fed through the scan (Gemma's local/global layers)."""
  folder = helpers.write_torch_family(str(tmp_path / family), tokenizer_dir, family, seed=5)
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  loop, tok = loading.load_model(folder, mesh)
  scanned, _ = loading.load_model(folder, mesh, scan_layers=True)
  assert scanned.blocks.attn.q[...].shape[0] == scanned.cfg.num_layers
  tokens, valid = helpers.padded_batch(len(tok), 6)
  ours = helpers.our_log_probs(scanned, tokens, valid)
  assert helpers.masked_max_diff(ours, helpers.torch_log_probs(folder, tokens, valid), valid) < 1e-4
  assert helpers.masked_max_diff(ours, helpers.our_log_probs(loop, tokens, valid), valid) < 1e-5
  settings = sampler.SamplingConfig(12, temperature=0.0)
  outs = [jax.device_get(sampler.make_sampler(m, mesh, settings)(
      nnx.state(m), tokens[:, :10], valid[:, :10] | True, jax.random.key(0))) for m in (loop, scanned)]
  np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
  np.testing.assert_allclose(outs[0].log_probs, outs[1].log_probs, atol=1e-5)


def test_scanned_export_equals_unscanned_export(tmp_path, tiny_hf_folder):
  """Import stacks the per-layer tensors, export unstacks them: the same folder either way."""
  from rlaif_jax.models import safetensors_io
  files = []
  for scan in (False, True):
    model, tok = loading.load_model(tiny_hf_folder, scan_layers=scan)
    out = str(tmp_path / f'scan{scan}')
    hf_checkpoint.export_folder(nnx.state(model), model.cfg.replace(scan_layers=False), out, tok)
    files.append(dict(safetensors_io.read(out + '/model.safetensors')))
  assert sorted(files[0]) == sorted(files[1])
  for name in files[0]:
    np.testing.assert_array_equal(np.asarray(files[0][name]), np.asarray(files[1][name]), name)


def _hlo_size(cfg, layers: int) -> int:
  model = loading.random_model(cfg.replace(num_layers=layers), 0)
  graphdef, state = nnx.split(model)
  tokens = jnp.zeros((2, 8), jnp.int32)
  fn = jax.jit(lambda st, t: model_lib.forward(nnx.merge(graphdef, st), t, t >= 0).logits)
  return len(fn.lower(state, tokens).as_text())


def test_scanned_program_does_not_grow_with_depth():
  """What makes compiles fast at 8B: the scanned program is the same size at 2 and 8 layers (one
  block body), where the loop's grows with every layer."""
  loop = [_hlo_size(CFG, n) for n in (2, 8)]
  scanned = [_hlo_size(CFG.replace(scan_layers=True), n) for n in (2, 8)]
  assert loop[1] > 2.5 * loop[0]
  assert scanned[1] < 1.05 * scanned[0]


def test_scanned_model_checkpoint_is_stacked_and_sharded():
  """The stacked parameters carry a leading 'layers' axis in their logical names, replicated by
  the rules, and keep their per-kind sharding on the other axes."""
  mesh = shd.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  model = loading.random_model(CFG.replace(scan_layers=True), 0, mesh)
  q = model.blocks.attn.q
  assert q.get_metadata()['logical_axes'] == ('layers', 'embed', 'heads', 'head_dim')
  assert tuple(q[...].sharding.spec)[:3] == (None, 'fsdp', 'tensor')
  names = set(hf_checkpoint.host_arrays(nnx.state(model)))
  assert 'layers/1/mlp/down' in names and not any(n.startswith('blocks/') for n in names)


def test_stacked_kv_cache_decodes_like_per_layer_caches():
  """The scanned decode step itself (what accelerators run; the CPU sampler unstacks first): a
  stacked [L, ...] cache written in place at (layer, index) gives the tokens of per-layer caches."""
  cfg = CFG.replace(layer_types=('sliding', 'full'), sliding_window=4, num_layers=2)
  loop = loading.random_model(cfg, 1, shd.make_mesh({'data': 1}, jax.devices()[:1]))
  scanned = loading.place(cfg.replace(scan_layers=True), hf_checkpoint.host_arrays(nnx.state(loop)),
                          shd.make_mesh({'data': 1}, jax.devices()[:1]))
  assert model_lib.unscanned(scanned).cfg == loop.cfg
  settings = sampler.SamplingConfig(9, temperature=0.0)
  tokens = np.random.default_rng(0).integers(3, 64, (2, 6)).astype(np.int32)
  valid = np.ones_like(tokens, bool)
  valid[1, :2] = False

  def decode(m):
    graphdef, state = nnx.split(m)

    @jax.jit
    def run(state, tokens, valid):
      model = nnx.merge(graphdef, state)
      d = sampler.prefill(model, tokens, valid, jax.random.key(0), settings)
      for _ in range(settings.max_new_tokens - 1):
        d = sampler.decode_step(model, d, settings)
      return d.tokens, d.cache.k
    return jax.device_get(run(state, tokens, valid))

  (ours, k_stacked), (theirs, k_layers) = decode(scanned), decode(loop)
  assert k_stacked.shape[0] == 2 and isinstance(k_layers, tuple)
  np.testing.assert_array_equal(ours, theirs)
  np.testing.assert_allclose(k_stacked[1], k_layers[1], atol=1e-5)
