"""Paths that may live in a bucket: `gs://` (and `s3://`) through etils.epath, the path type Orbax uses.

epath reaches buckets through fsspec (gcsfs, s3fs) and local paths through the os, so one code path
serves a laptop's disk and a TPU pod's bucket; Orbax's array data goes through tensorstore, which
finds the same credentials (Google's application default credentials). Readers that need a real
file (SentencePiece, tokenizers) get a local copy of a remote file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from etils import epath

REMOTE_SCHEMES = ("gs://", "s3://")
_FSSPEC_PACKAGE = {"gs://": "gcsfs", "s3://": "s3fs"}

if os.environ.get("STORAGE_EMULATOR_HOST"):
  # A local GCS emulator has no storage-control API: without this, gcsfs asks it for each bucket's
  # layout and logs a warning per path.
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def is_remote(path) -> bool:
  return str(path).startswith(REMOTE_SCHEMES)


def as_path(path):
  """`path` as a pathlib.Path when local (as given, ~ expanded), an epath when in a bucket: both
  have pathlib's methods."""
  if is_remote(path):
    return epath.Path(str(path))
  return Path(os.path.expanduser(str(path)))


def absolute(path) -> epath.Path:
  """An epath Orbax can take: a bucket URL as it is, a local path made absolute (epath's
  absolute() would turn gs://b into ./gs:/b)."""
  if is_remote(path):
    return epath.Path(str(path))
  return epath.Path(os.path.abspath(os.path.expanduser(str(path))))


def bucket_problem(path) -> str | None:
  """Why `path`'s bucket cannot be used (missing package, no such bucket, no access), or None.

  Checked before long work starts, so a typo in a bucket name costs seconds, not a compilation.
  """
  if not is_remote(path):
    return None
  scheme = str(path)[:5]
  package = _FSSPEC_PACKAGE[scheme]
  try:
    __import__(package)
  except ImportError:
    return f"{scheme} paths need the {package} package (pip install 'phi1_jax[gcs]' or pip install {package})"
  bucket = str(path)[5:].split("/", 1)[0]
  if not bucket:
    return "no bucket name"
  try:
    if not epath.Path(f"{scheme}{bucket}").exists():
      return f"bucket {scheme}{bucket} does not exist (or these credentials cannot see it)"
  except Exception as e:  # gcsfs raises its own HttpError classes for 401/403; all mean "no access"
    return f"bucket {scheme}{bucket} cannot be read: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  return None


def local_copy(path) -> Path:
  """A local file with `path`'s contents: `path` itself when local, else a copy in a temp folder
  (named by the URL, so two files of one name do not collide)."""
  if not is_remote(path):
    return Path(path)
  remote = epath.Path(str(path))
  folder = Path(tempfile.gettempdir()) / "phi1_jax_remote" / hashlib.sha256(str(path).encode()).hexdigest()[:16]
  folder.mkdir(parents=True, exist_ok=True)
  local = folder / remote.name
  local.write_bytes(remote.read_bytes())
  return local


def copy(src, dst) -> None:
  """Copies a file or a folder tree from `src` to `dst`, either of them local or in a bucket."""
  src, dst = as_path(src), as_path(dst)
  if not src.is_dir():
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return
  for f in src.rglob("*"):
    if not f.is_dir():
      copy(f, dst / f.relative_to(src))
