"""Parquet inputs in The Stack v1's layout (code in `content`, id in `hexsha`) through pack, curate,
decontam and the tokenizer, read by row group; a missing text column is one line, exit 2."""

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_fixtures import STDLIB, code_docs, read_records, small_tokenizer, write_jsonl  # noqa: F401
from llm_servers import FaultyLLMServer
from phi1_jax.cli import UserError
from phi1_jax.data import sources
from phi1_jax.data.pack import pack

STACK_KEYS = ["--text_key=content", "--id_key=hexsha"]


def write_stack_parquet(path: Path, docs: list[dict], row_group_size: int = 7) -> Path:
  """docs ({"id", "text"}; text may be None) as The Stack v1 lays them out, several row groups."""
  table = pa.table(
    {
      "hexsha": [d["id"] for d in docs],
      "size": [len(d["text"] or "") for d in docs],
      "content": pa.array([d["text"] for d in docs], pa.large_string()),
      "max_stars_repo_path": [f"src/{d['id']}.py" for d in docs],
      "lang": ["Python"] * len(docs),
    }
  )
  pq.write_table(table, path, row_group_size=row_group_size)
  return path


def _with_empty_rows(docs: list[dict]) -> list[dict]:
  """docs with a null and an empty text among them (rows The Stack has; skipped as empty documents)."""
  return docs[:5] + [{"id": "0" * 40, "text": None}] + docs[5:9] + [{"id": "1" * 40, "text": ""}] + docs[9:]


def test_pack_reads_row_groups_and_tokens_equal_the_same_documents_as_jsonl(tmp_path, small_tokenizer):
  docs = code_docs(60)
  folder = tmp_path / "stack"
  folder.mkdir()
  rows = _with_empty_rows(docs)
  write_stack_parquet(folder / "train-00000-of-00002.parquet", rows[:31])
  write_stack_parquet(folder / "train-00001-of-00002.parquet", rows[31:])
  described = sources.describe_inputs([folder], "content", "hexsha")
  units = list(sources.work_units(described))
  assert len(units) == 5 + 5  # 31 rows in 5 row groups of 7, 31 in 5
  assert sum(u[3] for u in units) == described[0]["bytes"]  # progress in bytes reaches the total

  from_parquet = pack(
    [folder], small_tokenizer, 16, tmp_path / "p", eval_fraction=0.2, workers=2, text_key="content", id_key="hexsha"
  )
  from_jsonl = pack(
    [write_jsonl(tmp_path / "docs.jsonl", docs)], small_tokenizer, 16, tmp_path / "j", eval_fraction=0.2
  )
  assert from_parquet["documents"] == from_jsonl["documents"] == 60
  assert from_parquet["skipped_empty"] == 2 and from_jsonl["skipped_empty"] == 0
  assert from_parquet["tokens"] == from_jsonl["tokens"]
  assert from_parquet["inputs"][0]["text_key"] == "content" and "text_key" not in from_jsonl["inputs"][0]
  for split in ("train", "eval"):
    a, b = read_records(tmp_path / "p", split), read_records(tmp_path / "j", split)
    assert len(a) == len(b) > 0 and all(np.array_equal(x, y) for x, y in zip(a, b))

  # JSONL in The Stack's layout reads alike with the same keys; other keys are another fingerprint
  stack_jsonl = tmp_path / "stack.jsonl"
  stack_jsonl.write_text("".join(json.dumps({"hexsha": d["id"], "content": d["text"]}) + "\n" for d in docs))
  keyed = pack(
    [stack_jsonl], small_tokenizer, 16, tmp_path / "k", eval_fraction=0.2, text_key="content", id_key="hexsha"
  )
  assert keyed["tokens"] == from_jsonl["tokens"] and keyed["records"] == from_jsonl["records"]
  assert sources.fingerprints(sources.describe_inputs([stack_jsonl], "content", "hexsha")) != sources.fingerprints(
    sources.describe_inputs([stack_jsonl])
  )


def test_a_missing_text_column_is_one_line_exit_2_in_every_stage(tmp_path, capsys, small_tokenizer):
  stack = write_stack_parquet(tmp_path / "stack.parquet", code_docs(3))
  columns = "(columns: hexsha, size, content, max_stars_repo_path, lang)"
  from phi1_jax.curate import __main__ as curate_cli
  from phi1_jax.data import pack as pack_cli, tokenizer as tok_cli
  from phi1_jax.decontam import __main__ as decontam_cli

  runs = {
    "python -m phi1_jax.data.pack": lambda: pack_cli.main(
      ["--input", str(stack), "--tokenizer", small_tokenizer, "--seq_len=8", f"--out={tmp_path / 'p'}"]
    ),
    "python -m phi1_jax.decontam": lambda: decontam_cli.main(
      ["--input", str(stack), f"--out={tmp_path / 'd'}", "--benchmarks=humaneval"]
    ),
    "python -m phi1_jax.curate annotate": lambda: curate_cli.main(
      ["annotate", "--input", str(stack), f"--out={tmp_path / 'a'}", "--base_url=http://127.0.0.1:9/v1", "--model=m"]
    ),
    "python -m phi1_jax.data.tokenizer train": lambda: tok_cli.main(
      ["train", "--input", str(stack), "--vocab_size=400", f"--out={tmp_path / 't'}"]
    ),
  }
  for prog, run in runs.items():
    assert run() == 2, prog
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{prog}: error: --input {stack}: no column 'text' {columns}") and "\n" not in err, err
  assert not any((tmp_path / name).exists() for name in "pdat")


def _read_jsonl(path: Path) -> list[dict]:
  with (gzip.open if path.name.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def test_decontam_removes_a_humaneval_solution_planted_in_a_parquet_row(tmp_path):
  from phi1_jax.decontam import __main__ as decontam_cli
  from phi1_jax.eval.problems import load_humaneval

  problem = load_humaneval()["HumanEval/12"]
  planted = {"id": "f" * 40, "text": "import os\n\n" + problem.prompt + problem.canonical_solution}
  docs = code_docs(30)
  stack = write_stack_parquet(tmp_path / "python.parquet", _with_empty_rows(docs[:20] + [planted] + docs[20:]))
  out = tmp_path / "out"
  argv = ["--input", str(stack), *STACK_KEYS, f"--out={out}", "--benchmarks=humaneval", "--tasks=2"]
  assert decontam_cli.main(argv) == 0
  removed = _read_jsonl(out / "removed.jsonl")
  assert [(r["id"], r["task_id"]) for r in removed] == [(planted["id"], "HumanEval/12")]
  kept = [d for p in sorted((out / "clean" / "python").glob("*.jsonl.gz")) for d in _read_jsonl(p)]
  assert sorted(d["id"] for d in kept) == sorted(d["id"] for d in docs)
  assert {d["id"]: d["text"] for d in kept} == {d["id"]: d["text"] for d in docs}
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["documents"] == 31 and manifest["kept"] == 30 and manifest["bad"] == 0
  assert manifest["inputs"][0]["text_key"] == "content"


def test_curate_annotates_each_non_empty_parquet_row_once_by_its_hexsha(tmp_path):
  from phi1_jax.curate import __main__ as curate_cli

  docs = code_docs(12)
  stack = write_stack_parquet(tmp_path / "python.parquet", _with_empty_rows(docs), row_group_size=4)
  out = tmp_path / "ann"
  with FaultyLLMServer(responder=lambda endpoint, body: "Educational score: 3") as server:
    argv = ["annotate", "--input", str(stack), *STACK_KEYS, f"--out={out}", f"--base_url={server.base_url}"]
    assert curate_cli.main([*argv, "--model=judge"]) == 0
    assert len(server.paid_keys()) == 12
  rows = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
  assert sorted(r["id"] for r in rows) == sorted(d["id"] for d in docs) and {r["score"] for r in rows} == {3}
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["documents"] == 12 and manifest["inputs"][0]["id_key"] == "hexsha"


def test_curate_filter_reads_parquet_files_as_documents(tmp_path):
  """curate filter's datatrove reader (documents.read_file_offsets): every non-empty row, in order, with
  offsets that end at the file's size."""
  from phi1_jax.curate import documents

  docs = code_docs(10)
  stack = write_stack_parquet(tmp_path / "python.parquet", _with_empty_rows(docs), row_group_size=3)
  [(file, root, text_key, id_key)] = documents.input_files(sources.describe_inputs([stack], "content", "hexsha"))
  read = list(documents.read_file_offsets(file, root, text_key, id_key))
  assert [(d["id"], d["text"]) for d, _ in read] == [(d["id"], d["text"]) for d in docs]
  offsets = [o for _, o in read]
  assert offsets == sorted(offsets) and offsets[-1] == stack.stat().st_size
  unnamed = [d["id"] for d, _ in documents.read_file_offsets(file, root, "content", "no_such_column")]
  assert unnamed[:6] == [
    "python.parquet:1",
    "python.parquet:2",
    "python.parquet:3",
    "python.parquet:4",
    "python.parquet:5",
    "python.parquet:7",
  ]  # row 6 is null: skipped


def test_tokenizer_trains_on_parquet_content(tmp_path):
  from phi1_jax.data.tokenizer import load_tokenizer, train_tokenizer

  docs = [{"id": f.name, "text": f.read_text()} for f in sorted((STDLIB / "json").glob("*.py"))]
  stack = write_stack_parquet(tmp_path / "python.parquet", _with_empty_rows(docs), row_group_size=2)
  tok = load_tokenizer(train_tokenizer([stack], 400, tmp_path / "tok", text_key="content"))
  assert tok.vocab_size == 400
  assert json.loads((tmp_path / "tok" / "manifest.json").read_text())["text_key"] == "content"


def test_a_column_that_is_not_text_is_refused(tmp_path):
  stack = write_stack_parquet(tmp_path / "stack.parquet", code_docs(3))
  with pytest.raises(UserError, match="column 'size' holds int64, not text"):
    sources.describe_inputs([stack], "size")
