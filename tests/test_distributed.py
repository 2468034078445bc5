"""Two processes joined by jax.distributed (CPU, gloo) give the single-process PPO update."""

import os
import socket
import subprocess
import sys

import numpy as np

from rlaif_jax.infra import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'tests', 'multihost_ppo.py')


def _env(devices, **extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_', 'SLURM_', 'OMPI_'))}
  env.update(XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu',
             **extra)
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  single = tmp_path / 'single.npz'
  r = subprocess.run([sys.executable, SCRIPT, str(single)], env=_env(4), cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]

  multi = tmp_path / 'multi.npz'
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, SCRIPT, str(multi)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / f'p{i}.log', 'w'),
                            env=_env(2, JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
                                     JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i)))
           for i in range(2)]
  codes = [p.wait(timeout=600) for p in procs]
  assert codes == [0, 0], [(tmp_path / f'p{i}.log').read_text()[-3000:] for i in range(2)]

  a, b = np.load(single), np.load(multi)
  assert int(a['processes']) == 1 and int(b['processes']) == 2
  assert sorted(a.files) == sorted(b.files)
  for name in set(a.files) - {'processes'}:
    np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)
  assert not np.allclose(a['metric_policy_loss'], 0)


def test_initialize_only_when_the_environment_asks():
  assert not distributed.wanted({})
  assert not distributed.wanted({'SLURM_NTASKS': '1'})
  assert distributed.wanted({'SLURM_NTASKS': '4'})
  assert distributed.wanted({'JAX_COORDINATOR_ADDRESS': 'host:1234'})
  assert distributed.wanted({'TPU_WORKER_HOSTNAMES': 'w0,w1'})
  assert not distributed.initialize('never')
