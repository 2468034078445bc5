"""One sharded PPO update of a tiny model on a (data=2, fsdp=2) mesh, written to an .npz.

Run by tests/test_distributed.py, either as one process with 4 CPU devices or as two processes with
2 devices each joined by `jax.distributed` (gloo collectives): the results must agree.
  python tests/multihost_ppo.py OUT.npz
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlaif_jax.infra import distributed  # noqa: E402

distributed.initialize('auto')

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from rlaif_jax.infra import sharding as shd  # noqa: E402
from rlaif_jax.models import hf_checkpoint, loading  # noqa: E402
from rlaif_jax.models import transformer as model_lib  # noqa: E402
from rlaif_jax.rl import config as rl_config  # noqa: E402
from rlaif_jax.rl import rollout as rollout_lib  # noqa: E402
from rlaif_jax.rl import update as rl_update  # noqa: E402

CFG = model_lib.ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8, scalar_head=True)


def main(out: str) -> None:
  mesh = shd.make_mesh({'data': 2, 'fsdp': 2})
  model = loading.random_model(CFG, 0, mesh)
  rng = np.random.default_rng(0)
  b, p, n = 8, 5, 6
  valid = np.ones((b, p), bool)
  valid[:2, :2] = False
  mask = np.ones((b, n), bool)
  mask[3, 4:] = False
  rollout = rollout_lib.Rollout(rng.integers(3, 32, (b, p)).astype(np.int32), valid,
                                rng.integers(3, 32, (b, n)).astype(np.int32), mask,
                                -np.abs(rng.normal(size=(b, n))).astype(np.float32),
                                -np.abs(rng.normal(size=(b, n))).astype(np.float32),
                                rng.normal(size=(b, n)).astype(np.float32),
                                rng.normal(size=b).astype(np.float32))
  update = rl_update.make_update(model, optax.sgd(0.1), mesh,
                                 rl_config.RLConfig('ppo', epochs=2, minibatches=2))
  state, metrics = update(update.init(), rollout, 0.05, jax.random.key(1))
  arrays = hf_checkpoint.host_arrays(state.params['policy'])
  losses = {k: np.asarray(v) for k, v in metrics.items()}
  if jax.process_index() == 0:
    np.savez(out, processes=jax.process_count(), **arrays, **{f'metric_{k}': v for k, v in losses.items()})


if __name__ == '__main__':
  main(sys.argv[1])
