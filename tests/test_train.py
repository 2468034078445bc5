"""Shared training pieces: the non-finite skip, SFT learning, checkpoints and metrics files."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlaif_jax.infra import checkpoints
from rlaif_jax.infra import metrics
from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import loading
from rlaif_jax.models import transformer as model_lib
from rlaif_jax.training import sft
from rlaif_jax.training import state as train_state
from rlaif_jax.training import step as train_step

CFG = model_lib.ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8)


def one_device():
  return shd.make_mesh({'data': 1}, jax.devices()[:1])


def scaled_loss(model, batch):
  """A loss whose value (and gradient) is multiplied by batch['scale'] (NaN or inf to break it)."""
  x = model.embed[...]
  loss = batch['scale'][0] * jnp.mean(x ** 2)
  return loss, {'loss': loss}


def test_non_finite_loss_or_gradient_skips_the_update():
  mesh = one_device()
  model = loading.random_model(CFG, 0, mesh)
  step = train_step.make_train_step(model, optax.adam(1e-2), mesh, scaled_loss)
  state = step.init()
  before = jax.tree.map(np.asarray, (state.params, state.opt_state))
  for bad in (np.nan, np.inf):
    state, m = step(state, {'scale': np.full((1,), bad, np.float32)})
    assert float(m['skipped']) == 1.0
    after = jax.tree.map(np.asarray, (state.params, state.opt_state))
    jax.tree.map(np.testing.assert_array_equal, after, before)  # parameters and moments untouched
  state, m = step(state, {'scale': np.ones((1,), np.float32)})
  assert float(m['skipped']) == 0.0
  assert not np.array_equal(np.asarray(state.params['embed'][...]), before[0]['embed'][...])
  assert int(state.step) == 3


def test_sft_raises_the_likelihood_of_the_demonstrations():
  mesh = one_device()
  model = loading.random_model(CFG, 0, mesh)
  rng = np.random.default_rng(0)
  # demonstrations: the response repeats the prompt's last token, then stops (token 2)
  prompt = rng.integers(3, 32, (16, 5)).astype(np.int32)
  response = np.concatenate([np.repeat(prompt[:, -1:], 3, 1), np.full((16, 1), 2)], 1).astype(np.int32)
  batch = sft.DemonstrationBatch(prompt, np.ones_like(prompt, bool), response, np.ones_like(response, bool))
  step = sft.make_train_step(model, train_state.make_optimizer(1e-2, 60, 5), mesh)
  state = step.init()
  losses = []
  for _ in range(60):
    state, m = step(state, batch)
    losses.append(float(m['loss']))
  assert losses[-1] < 0.3 * losses[0], losses[::10]
  assert float(m['tokens']) == response.size


def test_checkpoints_restore_exactly_and_keep_the_last_n(tmp_path):
  mesh = shd.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  model = loading.random_model(CFG, 0, mesh)
  step = train_step.make_train_step(model, optax.adam(1e-2), mesh, scaled_loss)
  state = step.init()
  ckpt = checkpoints.Checkpoints(str(tmp_path / 'ckpt'), interval=2, keep=2)
  saved = {}
  for i in range(1, 7):
    state, _ = step(state, {'scale': np.ones((4,), np.float32)})  # a batch the mesh splits
    if ckpt.save(i, state, {'kl_coef': 0.1 * i, 'data': {'position': i}}):
      saved[i] = jax.tree.map(np.asarray, state)
  ckpt.wait()
  # the first step (nothing saved yet), then every 2nd; the last 2 kept
  assert sorted(saved) == [1, 2, 4, 6] and ckpt.manager.all_steps() == [4, 6]
  fresh = step.init()
  got_step, restored, meta = ckpt.restore(fresh)
  assert got_step == 6 and meta == {'kl_coef': 0.6000000000000001, 'data': {'position': 6}}
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, restored), saved[6])
  assert restored.params['embed'][...].sharding == fresh.params['embed'][...].sharding
  ckpt.close()
  # restore_from: a step directory of another run
  s, _, meta = checkpoints.restore_from(str(tmp_path / 'ckpt' / '4'), fresh)
  assert s == 4 and meta['data'] == {'position': 4}


def test_metrics_jsonl_drops_rows_after_the_resume_step(tmp_path):
  w = metrics.Writer(str(tmp_path), 'rl')
  for i in range(1, 6):
    w.write(i, {'reward': np.float32(i), 'nan': float('nan')})
  w.close()
  w = metrics.Writer(str(tmp_path), 'rl', resume_step=3)
  w.write(4, {'reward': 40.0})
  w.close()
  rows = metrics.read(str(tmp_path), 'rl')
  assert [(r['step'], r['reward']) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
  assert rows[0]['nan'] == 'nan'
  assert json.loads(open(tmp_path / 'metrics.jsonl').readline())['stage'] == 'rl'
  assert list((tmp_path / 'tensorboard' / 'rl').glob('events.out.tfevents.*'))
