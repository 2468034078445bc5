"""PPO's pure pieces against plain NumPy and against what the losses' gradients must be."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlaif_jax.rl import advantages
from rlaif_jax.rl import kl_control
from rlaif_jax.rl import losses


def numpy_gae(rewards, values, mask, gamma, lam):
  b, t = rewards.shape
  adv = np.zeros((b, t))
  for i in range(b):
    n = int(mask[i].sum())  # real tokens are a prefix of the row
    last = 0.0
    for j in reversed(range(n)):
      next_value = values[i, j + 1] if j + 1 < n else 0.0
      delta = rewards[i, j] + gamma * next_value - values[i, j]
      last = delta + gamma * lam * last
      adv[i, j] = last
  return adv, (adv + values) * mask


@pytest.mark.parametrize('gamma, lam', [(1.0, 0.95), (0.99, 0.9), (0.9, 1.0)])
def test_gae_equals_numpy(gamma, lam):
  rng = np.random.default_rng(0)
  b, t = 6, 11
  rewards, values = rng.normal(size=(b, t)), rng.normal(size=(b, t))
  lengths = np.array([11, 1, 5, 0, 7, 10])
  mask = np.arange(t)[None] < lengths[:, None]
  adv, ret = jax.jit(advantages.gae, static_argnums=(3, 4))(jnp.asarray(rewards, jnp.float32),
                                                            jnp.asarray(values, jnp.float32),
                                                            jnp.asarray(mask), gamma, lam)
  ref_adv, ref_ret = numpy_gae(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(np.asarray(adv), ref_adv, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ret), ref_ret, atol=1e-5)
  assert (np.asarray(adv)[~mask] == 0).all()


def test_token_rewards_put_the_score_on_the_last_real_token():
  mask = jnp.asarray([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
  kl = jnp.ones((2, 4))
  r = np.asarray(advantages.token_rewards(jnp.asarray([2.0, -1.0]), kl, mask, 0.1))
  np.testing.assert_allclose(r, [[-0.1, -0.1, 1.9, 0.0], [-1.1, 0, 0, 0]], atol=1e-6)


def test_policy_loss_is_the_plain_policy_gradient_at_ratio_one():
  rng = np.random.default_rng(1)
  logp = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  adv = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  mask = jnp.asarray(rng.random((3, 5)) > 0.3)
  grad = jax.grad(lambda lp: losses.policy_loss(lp, logp, adv, mask, 0.2).loss)(logp)
  expected = -np.asarray(adv) * np.asarray(mask) / np.asarray(mask).sum()  # d/dlogp of -mean(A logp)
  np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-6)


def test_clipping_stops_the_gradient_where_it_should():
  old = jnp.zeros((1, 4))
  # ratios e^0.5 and e^-0.5 are outside 1 +- 0.2; advantages chosen so clipping binds on 0 and 3
  logp = jnp.asarray([[0.5, 0.5, -0.5, -0.5]])
  adv = jnp.asarray([[1.0, -1.0, 1.0, -1.0]])
  mask = jnp.ones((1, 4), bool)
  info = losses.policy_loss(logp, old, adv, mask, 0.2)
  grad = np.asarray(jax.grad(lambda lp: losses.policy_loss(lp, old, adv, mask, 0.2).loss)(logp))[0]
  assert grad[0] == 0 and grad[3] == 0  # r > 1+eps with A > 0, r < 1-eps with A < 0: clipped
  assert grad[1] != 0 and grad[2] != 0  # the pessimistic (unclipped) branch keeps its gradient
  assert float(info.clip_fraction) == 1.0 and float(info.approx_kl) > 0


def test_value_loss_clips_towards_the_old_value():
  v_old = jnp.zeros((1, 2))
  returns = jnp.asarray([[1.0, 1.0]])
  g = jax.grad(lambda v: losses.value_loss(v, v_old, returns, jnp.ones((1, 2), bool), 0.2))
  grad = np.asarray(g(jnp.asarray([[2.0, 0.1]])))[0]
  assert grad[0] > 0 and grad[1] < 0  # both pulled toward the return


def test_adaptive_kl_coefficient_moves_toward_its_target():
  coef = jnp.asarray(0.1)
  up = kl_control.adaptive_kl_coef(coef, jnp.asarray(12.0), 64, target=6.0, horizon=10000)
  down = kl_control.adaptive_kl_coef(coef, jnp.asarray(1.0), 64, target=6.0, horizon=10000)
  same = kl_control.adaptive_kl_coef(coef, jnp.asarray(6.0), 64, target=6.0, horizon=10000)
  assert float(up) > 0.1 > float(down) and float(same) == pytest.approx(0.1)
  np.testing.assert_allclose(float(up), 0.1 * (1 + 0.2 * 64 / 10000), rtol=1e-6)  # error clipped
  # iterated against a KL that responds to the coefficient, it settles near the target
  c = jnp.asarray(0.01)
  for _ in range(400):
    c = kl_control.adaptive_kl_coef(c, 0.6 / c, 512, target=6.0, horizon=1000)
  assert abs(0.6 / float(c) - 6.0) < 0.5


def test_kl_estimators_and_whitening():
  logp, ref = jnp.asarray([[-1.0, -2.0]]), jnp.asarray([[-1.5, -1.0]])
  np.testing.assert_allclose(np.asarray(losses.kl_penalty(logp, ref, 'k1')), [[0.5, -1.0]])
  assert (np.asarray(losses.kl_penalty(logp, ref, 'k3')) >= 0).all()
  with pytest.raises(ValueError, match='Unknown KL estimator'):
    losses.kl_penalty(logp, ref, 'k9')
  x = jnp.asarray([[1.0, 2.0, 3.0, 100.0]])
  m = jnp.asarray([[True, True, True, False]])
  w = np.asarray(advantages.whiten(x, m))
  assert abs(w[0, :3].mean()) < 1e-6 and abs(w[0, :3].std() - 1) < 1e-3 and w[0, 3] == 0
