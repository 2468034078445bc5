"""The entry point as a user runs it: the generation demo on the embedded default, and bad input."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, workdir):
  env = dict(os.environ, XLA_FLAGS='')  # one CPU device, as on a user's machine
  return subprocess.run([sys.executable, '-m', 'rlaif_jax.main', f'--workdir={workdir}', *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_generate_demo_runs_end_to_end(tmp_path):
  r = _main('--config=configs/smollm2_demo.py', '--config.generate.max_new_tokens=12',
            "--config.generate.prompts=('What is the capital of France?',)", workdir=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(line) for line in open(tmp_path / 'generate.jsonl')]
  assert len(rows) == 1 and 'Paris' in rows[0]['response']
  assert 'Paris' in r.stdout


@pytest.mark.parametrize('flag, expected', [
    ('--config.generate.max_new_tokns=3', 'unknown config key .*Did you mean "max_new_tokens"'),
    ('--config.model.source=/no/such/folder', 'neither .*smollm2.*Set config.model.source'),
    ('--config.mesh.tensor=3', r'does not fit 1 devices.*--config.mesh'),
    ("--config.stages=('generate','dance')", r"Unknown stage\(s\) \['dance'\] in config.stages"),
])
def test_bad_input_is_one_line_error(tmp_path, flag, expected):
  import re
  r = _main('--config=configs/smollm2_demo.py', flag, workdir=tmp_path)
  assert r.returncode == 2
  errors = [line for line in r.stderr.splitlines() if line.startswith('rlaif_jax: error:')]
  assert len(errors) == 1 and re.search(expected, errors[0]), r.stderr[-2000:]
  assert 'Traceback' not in r.stderr
