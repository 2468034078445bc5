"""Mesh sharding on 8 fake CPU devices: same logits as one device, parameters sharded as the rules say."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import hf_checkpoint
from rlaif_jax.models import loading
from rlaif_jax.models import transformer as model_lib
from tests import helpers

CFG = model_lib.ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                            num_heads=8, num_kv_heads=4, head_dim=8, rope_theta=1000.0)


def _logits(model, mesh, tokens, valid):
  graphdef, state = nnx.split(model)

  @jax.jit
  def f(state, tokens, valid):
    return model_lib.forward(nnx.merge(graphdef, state), tokens, valid).logits

  batch = shd.batch_sharding(mesh, model.cfg.logical_axis_rules, tokens.shape)
  with jax.set_mesh(mesh):
    return np.asarray(f(state, jax.device_put(tokens, batch), jax.device_put(valid, batch)))


def test_eight_devices():
  assert jax.device_count() == 8, 'tests/conftest.py sets 8 fake CPU devices before jax is imported'


@pytest.mark.parametrize('shape', [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_logits_equal_single_device(shape):
  single_mesh = shd.make_mesh({'data': 1}, jax.devices()[:1])
  single = loading.random_model(CFG, seed=0, mesh=single_mesh)
  tokens, valid = helpers.padded_batch(CFG.vocab_size, seed=5, batch=8, length=16)
  expected = _logits(single, single_mesh, tokens, valid)

  mesh = shd.make_mesh(dict(zip(shd.MESH_AXES, shape)))
  weights = hf_checkpoint.host_arrays(nnx.state(single))
  sharded = loading.place(CFG, weights, mesh)
  got = _logits(sharded, mesh, tokens, valid)
  np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)

  # Born sharded: the jitted init on this mesh gives the very same parameters.
  born = loading.random_model(CFG, seed=0, mesh=mesh)
  for a, b in zip(jax.tree.leaves(nnx.state(born)), jax.tree.leaves(nnx.state(single))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # Parameters are sharded as the rules say (size-1 mesh axes are dropped from the spec).
  data, fsdp, tensor = shape
  fs = 'fsdp' if fsdp > 1 else None
  tp = 'tensor' if tensor > 1 else None
  for m in (sharded, born):
    q = m.layers[0].attn.q[...]
    assert q.sharding.spec == P(fs, tp, None)
    assert q.addressable_shards[0].data.shape == (64 // fsdp, 8 // tensor, 8)
    assert m.layers[1].mlp.down[...].sharding.spec == P(tp, fs)
    assert m.embed[...].sharding.spec == P(tp, fs)
    assert m.final_norm.scale[...].sharding.is_fully_replicated


def test_sharded_loading_of_a_hf_folder(tmp_path, tokenizer_dir):
  folder = helpers.write_torch_llama(str(tmp_path / 'm'), tokenizer_dir, seed=3)
  mesh = shd.make_mesh({'data': 2, 'fsdp': 4, 'tensor': 1})
  model, tok = loading.load_model(folder, mesh)
  assert model.layers[0].mlp.gate[...].sharding.spec == P('fsdp', None)
  tokens, valid = helpers.padded_batch(len(tok), seed=3, batch=8, length=16)
  ours = _logits(model, mesh, tokens, valid)
  logp = np.take_along_axis(jax.nn.log_softmax(ours[:, :-1]), tokens[:, 1:, None], -1)[..., 0]
  assert helpers.masked_max_diff(np.asarray(logp), helpers.torch_log_probs(folder, tokens, valid),
                                 valid) < 1e-4


def test_dimension_that_does_not_divide_is_a_clear_error():
  mesh = shd.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 8})
  cfg = CFG.replace(num_heads=4, num_kv_heads=2, head_dim=16)
  with pytest.raises(ValueError, match=r'heads=\d\) cannot be split evenly over mesh axes .*tensor.* of size 8. Fix: set config.mesh'):
    loading.random_model(cfg, seed=0, mesh=mesh)


def test_smollm2_heads_on_tensor_parallel_mesh_name_the_fix():
  mesh = shd.make_mesh({'data': 4, 'fsdp': 1, 'tensor': 2})
  with pytest.raises(ValueError, match=r'kv_heads=3.*Fix: set config.mesh'):
    loading.load_model('smollm2', mesh)


def test_missing_rule_is_an_error_not_replication():
  rules = tuple(r for r in shd.DEFAULT_RULES if r[0] != 'mlp')
  with pytest.raises(ValueError, match=r"logical axis 'mlp' has no rule"):
    loading.random_model(CFG.replace(logical_axis_rules=rules), 0, shd.make_mesh({'data': 8}))


def test_mesh_errors():
  with pytest.raises(ValueError, match='needs 16 devices but 8 are available'):
    shd.make_mesh({'data': 4, 'fsdp': 4, 'tensor': 1})
  with pytest.raises(ValueError, match='does not fit 8 devices'):
    shd.make_mesh({'data': -1, 'fsdp': 3})
  with pytest.raises(ValueError, match='Unknown mesh axes'):
    shd.make_mesh({'model': 8})
  assert dict(shd.make_mesh({'data': -1, 'tensor': 2}).shape) == {'data': 4, 'fsdp': 1, 'tensor': 2}
  with pytest.raises(ValueError, match='mesh axes are'):
    shd.rules_from_config([('batch', 'dp')])
