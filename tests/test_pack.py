"""Packing: counts, record layout, idempotence, recovery from a killed run, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data_fixtures import code_docs, read_records, small_tokenizer, write_jsonl  # noqa: F401
from helpers import STDLIB, alive
from phi1_jax.cli import UserError
from phi1_jax.data.pack import pack, split_hash
from phi1_jax.data.tokenizer import load_tokenizer


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "phi1_jax.data.pack", *map(str, args)], capture_output=True, text=True)


def _one_error_line(stderr: str) -> str:
  errors = [l for l in stderr.splitlines() if l.startswith("python -m phi1_jax.data.pack: error:")]
  assert len(errors) == 1, stderr
  return errors[0]


def _expected_streams(docs_by_id: dict[str, str], tok, threshold: float) -> dict[str, list[int]]:
  streams = {"train": [], "eval": []}
  for doc_id, text in docs_by_id.items():
    stream = streams["eval" if split_hash(doc_id) < threshold else "train"]
    if stream:
      stream.append(tok.eos_id)
    stream.extend(tok.encode(text))
  return streams


def test_counts_and_records_rebuild_the_stream(tmp_path, small_tokenizer):
  docs = code_docs(40)
  jsonl = write_jsonl(tmp_path / "docs.jsonl", docs)
  pyfolder = tmp_path / "pkg"
  (pyfolder / "sub").mkdir(parents=True)
  (pyfolder / "a.py").write_text("def a():\n\treturn 1  \n")
  (pyfolder / "sub" / "b.py").write_text("class B:\r\n    x = 'é'\r\n")
  (pyfolder / "__init__.py").write_text("")  # empty files are skipped, not bad
  seq_len = 16
  m = pack(
    [jsonl, pyfolder], small_tokenizer, seq_len, tmp_path / "out", eval_fraction=0.2, workers=2, records_per_shard=50
  )

  tok = load_tokenizer(small_tokenizer)
  texts = {d["id"]: d["text"] for d in docs}
  texts["pkg/a.py"] = (pyfolder / "a.py").read_text()
  texts["pkg/sub/b.py"] = (pyfolder / "sub" / "b.py").read_bytes().decode()
  streams = _expected_streams(texts, tok, m["eval_hash_threshold"])
  assert m["documents"] == 42 and m["skipped_empty"] == 1 and m["bad"]["count"] == 0
  assert m["tokenizer"]["eos_id"] == tok.eos_id and m["tokenizer"]["vocab_size"] == tok.vocab_size
  assert [i["sha256"] for i in m["inputs"]][0] == __import__("hashlib").sha256(jsonl.read_bytes()).hexdigest()
  for split, stream in streams.items():
    s = m["splits"][split]
    n_docs = sum((split_hash(i) < m["eval_hash_threshold"]) == (split == "eval") for i in texts)
    assert s["documents"] == n_docs
    assert (
      s["tokens"]
      == len(stream)
      == sum(
        len(tok.encode(texts[i])) for i in texts if (split_hash(i) < m["eval_hash_threshold"]) == (split == "eval")
      )
      + n_docs
      - 1
    )
    records = read_records(tmp_path / "out", split)
    assert len(records) == s["records"] == (len(stream) - 1) // seq_len >= 1
    assert all(len(r) == seq_len + 1 and r.dtype == np.int32 for r in records)
    rebuilt = np.concatenate([records[0]] + [r[1:] for r in records[1:]])
    assert rebuilt.tolist() == stream[: len(rebuilt)]
    assert s["dropped_tail_tokens"] == len(stream) - len(rebuilt)
  assert len(m["splits"]["train"]["shards"]) == -(-m["records"]["train"] // 50) >= 2
  assert m["splits"]["train"]["shards"][0] == f"train-00000-of-{len(m['splits']['train']['shards']):05d}.array_record"
  assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == m


def test_eval_split_gets_a_record_even_when_fraction_picks_none(tmp_path, small_tokenizer):
  jsonl = write_jsonl(tmp_path / "d.jsonl", code_docs(5))
  m = pack([jsonl], small_tokenizer, 8, tmp_path / "out", eval_fraction=1e-9, workers=1)
  assert m["records"]["eval"] >= 1 and m["records"]["train"] >= 1
  assert m["documents"] == m["splits"]["train"]["documents"] + m["splits"]["eval"]["documents"] == 5


def test_rerun_is_a_no_op_and_other_flags_refuse(tmp_path, small_tokenizer):
  jsonl = write_jsonl(tmp_path / "d.jsonl", code_docs(20))
  out = tmp_path / "out"
  m = pack([jsonl], small_tokenizer, 16, out, workers=1)
  before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
  r = _cli("--input", jsonl, "--tokenizer", small_tokenizer, "--seq_len", 16, "--out", out, "--workers", 2)
  assert r.returncode == 0 and "nothing to do" in r.stderr
  assert pack([jsonl], small_tokenizer, 16, out, workers=2) == m
  r = _cli("--input", jsonl, "--tokenizer", small_tokenizer, "--seq_len", 32, "--out", out)
  assert r.returncode != 0 and "different inputs" in _one_error_line(r.stderr)
  assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_progress_on_jsonl_gz_counts_compressed_bytes(tmp_path, small_tokenizer):
  import gzip
  import re

  path = tmp_path / "d.jsonl.gz"  # code compresses about 4x: uncompressed bytes would read 400%
  path.write_bytes(gzip.compress("".join(json.dumps(d) + "\n" for d in code_docs(3000)).encode()))
  r = _cli("--input", path, "--tokenizer", small_tokenizer, "--seq_len", 64, "--out", tmp_path / "out", "--workers", 1)
  assert r.returncode == 0, r.stderr
  shown = re.findall(r"^pack: ([\d.]+)/([\d.]+) MB \((\d+)%\), [\d.]+ MB/s, ETA (-?\d+)s$", r.stderr, re.M)
  assert shown and shown[-1][0] == shown[-1][1] == f"{path.stat().st_size / 1e6:.1f}", r.stderr
  assert [int(pct) for _, _, pct, _ in shown][-1] == 100 and all(int(eta) >= 0 for *_, eta in shown), r.stderr


def test_killed_run_leaves_nothing_complete_and_rerun_recovers(tmp_path, small_tokenizer):
  # Enough text that packing takes a few seconds with one worker.
  big = [{"id": f"big-{i}", "text": t["text"] * 20} for i, t in enumerate(code_docs(600))]
  jsonl = write_jsonl(tmp_path / "big.jsonl", big)
  out = tmp_path / "out"
  partial = tmp_path / ".out.partial"
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "phi1_jax.data.pack",
      "--input",
      str(jsonl),
      "--tokenizer",
      small_tokenizer,
      "--seq_len",
      "64",
      "--out",
      str(out),
      "--workers",
      "1",
    ],
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 60
  while not (partial / "train-00000.array_record.part").exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "packing finished before it could be killed; make the input bigger"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (out / "manifest.json").exists()  # nothing looks complete
  assert partial.exists()

  m = pack([jsonl], small_tokenizer, 64, out, workers=2)
  assert not partial.exists()
  assert m["documents"] == 600 and m["records"]["train"] > 0
  assert len(read_records(out, "train")) == m["records"]["train"]


def test_bad_lines_reported_and_threshold_fails(tmp_path, small_tokenizer):
  good = [json.dumps(d) for d in code_docs(6)]
  lines = [
    good[0],
    "{not json",
    good[1],
    json.dumps({"id": "x", "text": ""}),
    good[2],
    json.dumps({"id": "y"}),
    good[3],
    good[4],
    good[5],
  ]
  path = tmp_path / "d.jsonl"
  path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "z", "text": "caf\xe9"}\n')
  out = tmp_path / "out"
  r = _cli("--input", path, "--tokenizer", small_tokenizer, "--seq_len", 8, "--out", out)
  assert r.returncode != 0
  error = _one_error_line(r.stderr)
  assert "3 of 9 items are bad" in error and f"{path}:2: not valid JSON" in error  # line 4 is empty: skipped
  for where in (f"{path}:2: not valid JSON", f"{path}:6: no text", f"{path}:10: not UTF-8"):
    assert where in r.stderr
  assert f"{path}:4" not in r.stderr
  assert not out.exists() and not (tmp_path / ".out.partial").exists()

  m = pack([path], small_tokenizer, 8, out, max_bad_fraction=0.5, workers=1)
  assert m["bad"]["count"] == 3 and f"{path}:10: not UTF-8" in m["bad"]["items"]
  assert m["documents"] == 6 and m["skipped_empty"] == 1


def test_empty_documents_are_skipped_alike_in_jsonl_and_folders(tmp_path, small_tokenizer):
  """A package's empty __init__.py files: skipped and counted, in a folder and as JSONL rows alike."""
  pkg = tmp_path / "pkg"
  for i in range(20):
    (pkg / f"sub{i}").mkdir(parents=True)
    (pkg / f"sub{i}" / "__init__.py").write_text("" if i % 2 else "  \n")  # empty and whitespace-only
    (pkg / f"sub{i}" / "mod.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 5)
  rows = [{"id": str(f.relative_to(tmp_path)), "text": f.read_text()} for f in sorted(pkg.rglob("*.py"))]
  jsonl = write_jsonl(tmp_path / "pkg.jsonl", rows)
  jsonl.write_text(jsonl.read_text() + "\n")  # a blank line is skipped too
  manifests = {}
  for name, src in (("folder", pkg), ("jsonl", jsonl)):
    r = _cli("--input", src, "--tokenizer", small_tokenizer, "--seq_len", 16, "--out", tmp_path / name)
    assert r.returncode == 0, r.stderr  # the default --max_bad_fraction (0.1%) is not touched
    assert "20 empty documents skipped, 0 bad items" in r.stdout
    manifests[name] = json.loads((tmp_path / name / "manifest.json").read_text())
  for m in manifests.values():
    assert m["documents"] == 20 and m["skipped_empty"] == 20 and m["bad"]["count"] == 0
  assert manifests["jsonl"]["skipped_blank_lines"] == 1


def test_non_utf8_py_file_is_bad(tmp_path, small_tokenizer):
  folder = tmp_path / "src"
  folder.mkdir()
  (folder / "ok.py").write_text("x = 1\n" * 50)
  (folder / "latin1.py").write_bytes(b"# line one\ns = '\xe9'\n")
  with pytest.raises(UserError, match=r"latin1.py:2: not UTF-8"):
    pack([folder], small_tokenizer, 8, tmp_path / "out", workers=1)


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--seq_len", "0"], "--seq_len 0"),
    (["--seq_len", "8", "--eval_fraction", "1.5"], "--eval_fraction 1.5"),
    (["--seq_len", "8", "--workers", "0"], "--workers 0"),
  ],
)
def test_bad_flags_fail_before_work(tmp_path, small_tokenizer, flags, message):
  jsonl = write_jsonl(tmp_path / "d.jsonl", code_docs(3))
  r = _cli("--input", jsonl, "--tokenizer", small_tokenizer, "--out", tmp_path / "out", *flags)
  assert r.returncode != 0 and message in _one_error_line(r.stderr)
  assert not (tmp_path / "out").exists()


def test_missing_input_and_occupied_out_fail_clearly(tmp_path, small_tokenizer):
  r = _cli(
    "--input", tmp_path / "missing.jsonl", "--tokenizer", small_tokenizer, "--seq_len", 8, "--out", tmp_path / "o"
  )
  assert r.returncode != 0 and "missing.jsonl: not found" in _one_error_line(r.stderr)
  r = _cli("--input", STDLIB / "json", "--tokenizer", tmp_path, "--seq_len", 8, "--out", tmp_path / "o")
  assert r.returncode != 0 and "--tokenizer" in _one_error_line(r.stderr)
  users = tmp_path / "users"
  users.mkdir()
  (users / "notes.txt").write_text("mine")
  jsonl = write_jsonl(tmp_path / "d.jsonl", code_docs(3))
  r = _cli("--input", jsonl, "--tokenizer", small_tokenizer, "--seq_len", 8, "--out", users)
  assert r.returncode != 0 and "refusing to overwrite" in _one_error_line(r.stderr)
  assert (users / "notes.txt").read_text() == "mine"


def test_ctrl_c_is_one_line_exit_130_and_leaves_nothing(tmp_path, small_tokenizer):
  """SIGINT to the process group (a terminal's Ctrl-C reaches the spawned tokenizer workers too)."""
  from phi1_jax.cli import descendants

  big = [{"id": f"big-{i}", "text": t["text"] * 20} for i, t in enumerate(code_docs(600))]
  jsonl = write_jsonl(tmp_path / "big.jsonl", big)
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "phi1_jax.data.pack",
      "--input",
      str(jsonl),
      "--tokenizer",
      small_tokenizer,
      "--seq_len",
      "64",
      "--out",
      str(tmp_path / "out"),
      "--workers",
      "2",
    ],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  partial, workers = tmp_path / ".out.partial", set()
  deadline = time.time() + 60
  while not (partial / "train-00000.array_record.part").exists() and proc.poll() is None and time.time() < deadline:
    workers.update(descendants(proc.pid))
    time.sleep(0.02)
  assert proc.poll() is None, "packing finished before it could be stopped; make the input bigger"
  os.killpg(proc.pid, signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130 and err.strip().splitlines() == [
    "stopped by SIGINT: nothing is kept (a stopped pack starts again); rerun the same command to resume"
  ], err
  assert not partial.exists() and not (tmp_path / "out").exists()

  deadline = time.time() + 10
  while any(map(alive, workers)) and time.time() < deadline:
    time.sleep(0.05)
  assert workers and not [p for p in workers if alive(p)]  # the spawned workers died with it
