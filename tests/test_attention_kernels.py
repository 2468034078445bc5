"""Fused attention kernels (models/attention.py): `jax.nn.dot_product_attention` and Pallas splash
attention (interpret mode on this CPU) give the dense path's numbers, forward and backward, with GQA,
sliding windows in a layer scan, soft-capping and padding on both sides; the sampler's prefill runs
through them; splash runs sharded under a mesh; 'auto' picks by backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlaif_jax.generation import sampler
from rlaif_jax.infra import sharding as shd
from rlaif_jax.infra.errors import UserError
from rlaif_jax.models import attention, loading
from rlaif_jax.models import transformer as model_lib
from tests import helpers

CFG = model_lib.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8)
VARIANTS = {
    'gqa': {},
    'window_scanned': dict(layer_types=('sliding', 'full'), sliding_window=5, scan_layers=True,
                           rope_local_theta=100.0),
    'softcap_qknorm': dict(attn_softcap=3.0, qk_norm=True, query_pre_attn_scalar=16.0,
                           layer_types=('full', 'sliding'), sliding_window=7),
}


def _log_probs_and_grads(model, tokens, valid):
  graphdef, state = nnx.split(model)

  def loss(st):
    logits = model_lib.forward(nnx.merge(graphdef, st), tokens, valid).logits
    lp = model_lib.token_log_probs(logits[:, :-1], tokens[:, 1:])
    both = valid[:, :-1] & valid[:, 1:]
    return jnp.sum(jnp.where(both, lp, 0.0)), lp

  (_, lp), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
  return np.asarray(lp), [np.asarray(g) for g in jax.tree.leaves(grads)]


@pytest.mark.parametrize('variant', sorted(VARIANTS))
@pytest.mark.parametrize('kernel', ['dot_product', 'splash'])
def test_kernel_matches_the_dense_path_forward_and_backward(kernel, variant):
  cfg = CFG.replace(**VARIANTS[variant])
  if kernel == 'dot_product' and cfg.attn_softcap:  # no soft-capping in jax.nn.dot_product_attention
    assert attention.resolve(kernel, softcap=cfg.attn_softcap) == 'xla'
    return
  tokens, valid = helpers.padded_batch(cfg.vocab_size, seed=3, length=20)
  tokens, valid = jnp.asarray(tokens), jnp.asarray(valid)
  dense = loading.random_model(cfg.replace(attention='xla'), 1)
  fused = loading.random_model(cfg.replace(attention=kernel), 1)
  lp_dense, g_dense = _log_probs_and_grads(dense, tokens, valid)
  lp_fused, g_fused = _log_probs_and_grads(fused, tokens, valid)
  assert helpers.masked_max_diff(lp_fused, lp_dense, np.asarray(valid)) < 1e-5
  assert len(g_fused) == len(g_dense)
  for a, b in zip(g_fused, g_dense):
    np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())))
  # the kernel really ran: a wrong window would change the numbers (windowed variants only)
  if cfg.sliding_window:
    wider = loading.random_model(cfg.replace(attention=kernel, sliding_window=cfg.sliding_window + 4), 1)
    assert helpers.masked_max_diff(_log_probs_and_grads(wider, tokens, valid)[0], lp_dense,
                                   np.asarray(valid)) > 1e-4


@pytest.mark.parametrize('kernel', ['dot_product', 'splash'])
def test_sampler_prefill_through_the_kernel_decodes_the_same(kernel):
  cfg = CFG.replace(**VARIANTS['window_scanned'])
  mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  tokens, valid = helpers.padded_batch(cfg.vocab_size, seed=4, length=12)
  prompt, prompt_valid = tokens, valid.copy()
  prompt_valid[:, -1] = True  # left-padded prompts: every row ends in a real token
  prompt_valid[1] = True
  prompt_valid[3, -3:] = True
  settings = sampler.SamplingConfig(8, temperature=0.0)
  outs = []
  for k in ('xla', kernel):
    model = loading.random_model(cfg.replace(attention=k), 2, mesh)
    fn = sampler.make_sampler(model, mesh, settings)
    outs.append(jax.device_get(fn(nnx.state(model), prompt, prompt_valid, jax.random.key(0))))
  np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
  np.testing.assert_allclose(outs[0].log_probs, outs[1].log_probs, atol=1e-5)


def test_splash_runs_sharded_over_batch_and_kv_heads_under_a_mesh():
  """Under jax.set_mesh the Pallas call runs in shard_map (batch over data, kv heads over tensor)."""
  mesh = shd.make_mesh({'data': 2, 'tensor': 2}, jax.devices()[:4])
  tokens, valid = helpers.padded_batch(CFG.vocab_size, seed=5, length=16)
  dense = helpers.our_log_probs(loading.random_model(CFG.replace(attention='xla'), 3), tokens, valid)
  model = loading.random_model(CFG.replace(attention='splash'), 3, mesh)
  graphdef, state = nnx.split(model)
  batch = shd.batch_sharding(mesh, CFG.logical_axis_rules, tokens.shape)

  def f(st, t, v):
    logits = model_lib.forward(nnx.merge(graphdef, st), t, v).logits
    return model_lib.token_log_probs(logits[:, :-1], t[:, 1:])

  with jax.set_mesh(mesh):
    fn = jax.jit(f, in_shardings=(shd.state_shardings(state, mesh, CFG.logical_axis_rules), batch,
                                  batch))
    lowered = fn.lower(state, tokens, valid).as_text()
    ours = np.asarray(fn(state, jax.device_put(tokens, batch), jax.device_put(valid, batch)))
  assert 'shard_map' in lowered or 'sdy.manual_computation' in lowered
  assert helpers.masked_max_diff(ours, dense, valid) < 1e-5


def test_auto_picks_by_backend_and_bad_names_are_clear_errors():
  assert attention.resolve('auto', 'cpu') == 'xla'
  assert attention.resolve('auto', 'gpu') == 'dot_product'
  assert attention.resolve('auto', 'tpu') == 'splash'
  assert attention.resolve('auto', 'tpu', softcap=50.0) == 'splash'  # soft-capping in the kernel
  assert attention.resolve('auto', 'gpu', softcap=50.0) == 'xla'
  assert attention.resolve('auto') == 'xla'  # this CPU: the demo's and the suite's numbers as before
  with pytest.raises(UserError, match='Unknown attention kernel .flash.*--config.model.attention'):
    attention.resolve('flash')
  with pytest.raises(UserError, match='Unknown attention kernel'):
    CFG.replace(attention='flash')
