"""The package's layering, read from its imports (ast): a lower layer never imports a higher one, and
only the entry points read flags. Also: importing any module changes no global setting."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'rlaif_jax')

# room -> the rooms it may import (besides itself)
ALLOWED = {
    'infra': set(),
    'models': {'infra'},
    'data': {'infra'},
    'generation': {'models', 'infra'},
    'feedback': {'generation', 'models', 'infra'},
    'training': {'generation', 'models', 'infra'},
    'rl': {'training', 'generation', 'models', 'infra'},
    'pipeline': {'rl', 'feedback', 'training', 'generation', 'models', 'data', 'infra'},
    'plan': {'rl', 'feedback', 'training', 'generation', 'models', 'infra'},
    'main': {'pipeline', 'infra'},
}
ENTRY_POINTS = {'rlaif_jax/main.py', 'rlaif_jax/plan/__main__.py'}  # the only readers of flags
FLAG_MODULES = ('absl', 'ml_collections.config_flags')


def modules():
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        yield os.path.relpath(path, ROOT).replace(os.sep, '/'), path


def room(rel: str) -> str:
  parts = rel.split('/')
  return parts[1] if len(parts) > 2 else parts[1][:-3]


def imported(path: str) -> list[tuple[int, str]]:
  """(line, module) of every import in a file, functions' local imports included."""
  out = []
  for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
    if isinstance(node, ast.Import):
      out += [(node.lineno, a.name) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      out += [(node.lineno, node.module)]
      out += [(node.lineno, f'{node.module}.{a.name}') for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      raise AssertionError(f'{path}:{node.lineno}: relative import; use absolute rlaif_jax imports')
  return out


def violations() -> list[str]:
  bad = []
  for rel, path in modules():
    here = room(rel)
    if rel == 'rlaif_jax/__init__.py':
      continue
    assert here in ALLOWED, f'{rel} is in no known room; add it to ALLOWED in this test'
    for line, name in imported(path):
      if name.startswith('rlaif_jax.'):
        target = name.split('.')[1]
        if target in ALLOWED and target != here and target not in ALLOWED[here]:
          bad.append(f'{rel}:{line} imports {name} ({here} may import {sorted(ALLOWED[here])})')
      if name.startswith(FLAG_MODULES) and rel not in ENTRY_POINTS:
        bad.append(f'{rel}:{line} imports {name}: only the entry points read flags')
  return bad


def test_no_lower_layer_imports_a_higher_one():
  assert violations() == []


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
  """The check itself fails on a models module importing the pipeline and on flags in a step."""
  fake = tmp_path / 'rlaif_jax'
  (fake / 'models').mkdir(parents=True)
  (fake / 'rl').mkdir()
  (fake / 'models' / 'bad.py').write_text('from rlaif_jax.pipeline import runner\n')
  (fake / 'rl' / 'flagged.py').write_text('def f():\n  from absl import flags\n')
  monkeypatch.setattr(sys.modules[__name__], 'PACKAGE', str(fake))
  monkeypatch.setattr(sys.modules[__name__], 'ROOT', str(tmp_path))
  found = violations()
  assert any('models/bad.py:1 imports rlaif_jax.pipeline' in v for v in found), found
  assert any('rl/flagged.py:2 imports absl' in v for v in found), found


@pytest.mark.parametrize('module', ['rlaif_jax.plan.stages', 'rlaif_jax.pipeline.runner',
                                    'rlaif_jax.models.loading'])
def test_importing_changes_no_global_setting(module):
  code = ('import os, jax; before = dict(os.environ); '  # (jax itself may set TPU variables)
          f'flags = dict(jax.config.values); import {module}; '
          'changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}; '
          'cfg = {k for k, v in jax.config.values.items() if flags.get(k) != v}; '
          'print(sorted(changed), sorted(cfg))')
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_PLATFORMS', 'TPU_SKIP_MDS_QUERY',
                                                          'ALLOW_MULTIPLE_LIBTPU_LOAD')}
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == '[] []'
