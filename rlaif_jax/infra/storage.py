"""The run's files. Paths are URLs through `etils.epath`: a local folder, or `gs://` / `s3://` (their
fsspec backends come with the `cloud` extra). Orbax checkpoints take the same paths.

With several processes the workdir is shared (a bucket, or a network disk) and writes are
collective: every process calls `write_*` at the same point of the program; process 0 writes, then
all wait at a barrier, so whatever any process reads next is there for everyone and no file is
written by two processes. Local writes are atomic (a temporary file, then rename); an object store's
write is atomic by itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable

import jax
from etils import epath

from rlaif_jax.infra import distributed
from rlaif_jax.infra.errors import MissingInput

PathLike = str | os.PathLike


def is_url(p: PathLike) -> bool:
  return '://' in os.fspath(p)


def path(p: PathLike) -> epath.Path:
  """`p` as an epath.Path; a local relative path becomes absolute (a URL is kept as it is)."""
  s = os.fspath(p)
  return epath.Path(s if is_url(s) else os.path.abspath(os.path.expanduser(s)))


def put_bytes(p: PathLike, data: bytes) -> None:
  """This process writes `data` to `p`, atomically (no barrier: see `write_bytes`)."""
  p = path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  if is_url(p):
    p.write_bytes(data)
  else:
    tmp = p.parent / (p.name + '.tmp')
    tmp.write_bytes(data)
    tmp.replace(p)


def write_bytes(p: PathLike, data: bytes) -> None:
  """Collective: process 0 writes `data` to `p` (atomically), then every process waits for it."""
  if distributed.is_writer():
    put_bytes(p, data)
  distributed.barrier(f'write {path(p)}')


def write_text(p: PathLike, text: str) -> None:
  write_bytes(p, text.encode('utf-8'))


def write_json(p: PathLike, obj: Any) -> None:
  write_text(p, json.dumps(obj, indent=1))


def write_jsonl(p: PathLike, rows: Iterable[dict]) -> None:
  write_text(p, ''.join(json.dumps(r) + '\n' for r in rows))


def read_json(p: PathLike) -> Any:
  return json.loads(path(p).read_text(encoding='utf-8'))


def read_jsonl(p: PathLike) -> list[dict]:
  return [json.loads(line) for line in path(p).read_text(encoding='utf-8').splitlines()
          if line.strip()]


def exists(p: PathLike) -> bool:
  return path(p).exists()


def makedirs(p: PathLike) -> epath.Path:
  """Collective: the folder `p` exists on return (process 0 makes it)."""
  p = path(p)
  if distributed.is_writer():
    p.mkdir(parents=True, exist_ok=True)
  distributed.barrier(f'mkdir {p}')
  return p


def local_copy(p: PathLike, cache: str | None = None) -> str:
  """A local path for `p`: `p` itself when local; a URL's file or folder is copied once (per host
  and process) into `cache` (default ~/.cache/rlaif_jax/remote), for readers that need local files
  (memory-mapped safetensors, tokenizers, GGUF)."""
  if not is_url(p):
    return os.fspath(p)
  src = path(p)
  if not src.exists():
    raise MissingInput(f'{p} does not exist (or this machine cannot read it).')
  key = hashlib.sha256(os.fspath(p).encode()).hexdigest()[:16]
  root = cache or os.path.join(os.path.expanduser('~'), '.cache', 'rlaif_jax', 'remote')
  dest = epath.Path(root) / f'{key}-{jax.process_index()}' / src.name
  done = dest.parent / '.complete'
  if not done.exists():
    files = [src] if not src.is_dir() else _files_under(src)
    for f in files:
      target = dest if f == src else dest / os.fspath(f)[len(os.fspath(src)):].lstrip('/')
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(f.read_bytes())
    done.write_text(os.fspath(p))
  return os.fspath(dest)


def _files_under(folder: epath.Path) -> list[epath.Path]:
  """Every file below `folder` (a walk with iterdir: buckets do not allow recursive globs)."""
  out = []
  for p in sorted(folder.iterdir()):
    out.extend(_files_under(p) if p.is_dir() else [p])
  return out
