r"""Remove HumanEval and MBPP look-alikes from training documents; report each method and Table 3.

  python -m phi1_jax.decontam --input=IN [IN ...] --out=OUT [--benchmarks=humaneval,mbpp --mbpp_path=FILE]
      [--ngram=13] [--ngram_min_hits=1] [--ast_tau=0.85] [--ast_min_nodes=10]
      [--embed_checkpoint=CKPT [--embed_max_l2=D]] [--results=FILE_results.jsonl]
      [--tasks=T] [--workers=W] [--executor=local|slurm [--slurm_partition=P] [--slurm_wait]]

IN as `phi1_jax.data.pack` reads it: JSONL documents (.jsonl, .jsonl.gz), .parquet files (--text_key, --id_key:
The Stack v1 reads with --text_key=content --id_key=hexsha), .py files, folders of them.
Writes OUT/clean/<input name>/<rank>.jsonl.gz (each input's kept documents apart, `{"id","text","source",
"meta"}`, ready for `python -m phi1_jax.data.pack --input OUT/clean/<input name> ...`), OUT/removed.jsonl (id, task_id,
method, score, every method's match), OUT/report.json + OUT/report.md (nearest document per problem
per method, Table 3), OUT/manifest.json (inputs with checksums, counts, flags). OUT/work/ holds the
tasks' parts and datatrove's logs: a rerun skips completed tasks; a finished OUT is left alone
(with --results only the report is rewritten). Methods: phi1_jax/decontam/index.py.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from phi1_jax.stages import executors
from phi1_jax.cli import OneLineParser, UserError, report_error
from phi1_jax.data import sources

PROG = "python -m phi1_jax.decontam"
FORMAT = "phi1_jax.decontam/v1"


def _parse_args(argv):
  p = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
  p.add_argument("--input", nargs="+", required=True, help="JSONL(.gz), .parquet, .py files, folders of them")
  sources.add_key_args(p)
  p.add_argument("--out", required=True)
  p.add_argument("--benchmarks", default="humaneval,mbpp")
  p.add_argument("--mbpp_path", default=None, help="MBPP JSONL file (test split 11-510 is used)")
  p.add_argument("--ngram", type=int, default=13, help="words per n-gram")
  p.add_argument("--ngram_min_hits", type=int, default=1, help="shared n-grams with one problem that remove")
  p.add_argument("--ast_tau", type=float, default=0.85, help="AST match rate that removes")
  p.add_argument("--ast_min_nodes", type=int, default=10, help="smaller functions are not compared")
  p.add_argument("--exact_min_chars", type=int, default=0, help="shorter benchmark strings are not searched")
  p.add_argument(
    "--embed_checkpoint", default=None, help="embedder checkpoint for the L2 method (phi1_jax.stages.embed)"
  )
  p.add_argument("--embed_max_len", type=int, default=512)
  p.add_argument("--embed_max_l2", type=float, default=None, help="L2 distance that removes (default: report only)")
  p.add_argument("--results", default=None, help="eval results file (samples.jsonl_results.jsonl) or its folder")
  p.add_argument("--tasks", type=int, default=1, help="datatrove tasks (shards of the input)")
  p.add_argument("--workers", type=int, default=None, help="tasks run at once (default: 1 locally, all on SLURM)")
  executors.add_args(p, kinds=("local", "slurm"))
  return p.parse_args(argv)


def _check_flags(args) -> list[str]:
  names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
  from phi1_jax.decontam.benchmarks import BENCHMARKS

  unknown = [b for b in names if b not in BENCHMARKS]
  if unknown:
    raise UserError(f"--benchmarks={args.benchmarks}: unknown benchmark {unknown[0]!r}; known: {','.join(BENCHMARKS)}")
  if not names:
    raise UserError(f"--benchmarks={args.benchmarks!r}: name at least one of {','.join(BENCHMARKS)}")
  if "mbpp" in names and not args.mbpp_path:
    raise UserError("--benchmarks includes mbpp: give --mbpp_path=FILE (MBPP's mbpp.jsonl)")
  if args.ngram < 1:
    raise UserError(f"--ngram={args.ngram}: must be >= 1")
  if args.ngram_min_hits < 1:
    raise UserError(f"--ngram_min_hits={args.ngram_min_hits}: must be >= 1")
  if not 0 < args.ast_tau <= 1:
    raise UserError(f"--ast_tau={args.ast_tau}: must be in (0, 1]")
  if args.ast_min_nodes < 1:
    raise UserError(f"--ast_min_nodes={args.ast_min_nodes}: must be >= 1")
  if args.embed_max_l2 is not None and not 0 <= args.embed_max_l2 <= 2:
    raise UserError(f"--embed_max_l2={args.embed_max_l2}: unit vectors are 0 to 2 apart")
  for name in ("tasks", "workers", "embed_max_len"):
    if getattr(args, name) is not None and getattr(args, name) < 1:
      raise UserError(f"--{name}={getattr(args, name)}: must be >= 1")
  executors.check(args)
  return names


def input_names(described: list[dict]) -> list[str]:
  """Each input's folder under OUT/clean: its file or folder name without .jsonl/.gz/.py/.parquet, made unique."""
  names: list[str] = []
  for inp in described:
    name = Path(inp["path"]).name
    for suffix in (".gz", ".jsonl", ".py", ".parquet"):
      name = name.removesuffix(suffix)
    base = name = name or "input"
    k = 2
    while name in names:  # two inputs named alike (a/code.jsonl, b/code.jsonl): code, code-2
      name, k = f"{base}-{k}", k + 1
    names.append(name)
  return names


def _units(described: list[dict]) -> list[tuple]:
  """Work units in a fixed order: ("py", file, id, input name) as pack names .py documents,
  ("jsonl" or "parquet", file, input name, text_key, id_key)."""
  units = []
  for inp, name in zip(described, input_names(described)):
    root = inp["_root"]
    for f in inp["_files"]:
      if f.name.endswith(".py"):
        units.append(("py", str(f), f"{root.name}/{f.relative_to(root).as_posix()}", name))
      else:
        units.append(("parquet" if f.name.endswith(sources.PARQUET) else "jsonl", str(f), name, *inp["_keys"]))
  return units


def _read_json(path: Path) -> dict | None:
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError:
    raise UserError(f"{path}: not valid JSON; refusing to touch {path.parent}") from None


def _claim_out(out: Path, fingerprint: str) -> str:
  """'done' (finished with these settings), 'resume' or 'new'; UserError when OUT holds anything else."""
  manifest = _read_json(out / "manifest.json")
  if manifest is not None:
    if manifest.get("fingerprint") == fingerprint:
      return "done"
    raise UserError(f"{out}: holds a decontamination of other inputs/benchmarks/flags; choose another --out")
  config = _read_json(out / "work" / "config.json")
  if config is not None:
    if config.get("fingerprint") == fingerprint:
      return "resume"
    raise UserError(f"{out}: holds an unfinished run with other inputs/benchmarks/flags; choose another --out")
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise UserError(f"{out}: exists, is not empty and is not a decontamination output; refusing to overwrite")
  return "new"


def _load_embeddings(args, refs, embedder):
  """The embedder (None without one) and the benchmark problems' embeddings."""
  if embedder is None and args.embed_checkpoint is None:
    return None, None, None
  spec = None
  if embedder is None:
    from phi1_jax.decontam import embedding

    spec = {"checkpoint": args.embed_checkpoint, "max_len": args.embed_max_len}
    try:
      embedder = embedding.load_embedder(**spec)
    except embedding.EmbedderUnavailable as e:
      raise UserError(str(e)) from None
  return embedder, spec, embedder.embed([r.text for r in refs])


def run(argv=None, embedder=None) -> dict:
  """The whole stage; `embedder` (an object with embed(texts) -> [N, D]) stands for --embed_checkpoint."""
  args = _parse_args(argv)
  names = _check_flags(args)
  if args.embed_max_l2 is not None and args.embed_checkpoint is None and embedder is None:
    raise UserError("--embed_max_l2 needs --embed_checkpoint")
  described = sources.describe_inputs(args.input, args.text_key, args.id_key)
  from phi1_jax.decontam import benchmarks as bench_lib, index as index_lib, pipeline, report as report_lib

  try:
    refs, bench_info = bench_lib.load(names, args.mbpp_path)
  except ValueError as e:
    raise UserError(str(e)) from None
  if args.results:
    try:
      report_lib.read_results(args.results)  # a bad results file fails now, not after the scan
    except ValueError as e:
      raise UserError(str(e)) from None
  out = Path(args.out).absolute()  # SLURM tasks may start in another folder
  flags = {
    "ngram": args.ngram,
    "ngram_min_hits": args.ngram_min_hits,
    "ast_tau": args.ast_tau,
    "ast_min_nodes": args.ast_min_nodes,
    "exact_min_chars": args.exact_min_chars,
    "embed_checkpoint": args.embed_checkpoint or ("python embedder" if embedder is not None else None),
    "embed_max_l2": args.embed_max_l2,
    "embed_max_len": args.embed_max_len,
    "tasks": args.tasks,
  }
  fingerprint = hashlib.sha256(
    json.dumps(
      {
        "format": FORMAT,
        "inputs": sources.fingerprints(described),
        "benchmarks": bench_info,
        "flags": flags,
      },
      sort_keys=True,
    ).encode()
  ).hexdigest()
  state = _claim_out(out, fingerprint)
  if state == "done":
    manifest = json.loads((out / "manifest.json").read_text())
    if args.results:
      index = index_lib.BenchmarkIndex(refs, _thresholds(args))
      report_lib.build(out, args.tasks, index, bench_info, flags, args.results)
      print(f"{out}: already decontaminated with these settings; report rewritten with {args.results}", file=sys.stderr)
    else:
      print(f"{out}: already decontaminated from these inputs, benchmarks and flags; nothing to do", file=sys.stderr)
    return manifest

  start = time.time()
  embedder, embed_spec, ref_embeddings = _load_embeddings(args, refs, embedder)
  index = index_lib.BenchmarkIndex(refs, _thresholds(args), ref_embeddings)
  (out / "work").mkdir(parents=True, exist_ok=True)
  lock = open(out / "work" / ".lock", "w")
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when this process ends, however it ends
  except BlockingIOError:
    raise UserError(f"{out}: another decontamination run is writing it") from None
  if state == "new":
    (out / "work" / "config.json").write_text(json.dumps({"fingerprint": fingerprint, "flags": flags}) + "\n")
  steps = pipeline.build_pipeline(
    _units(described),
    index,
    out,
    embed_spec,
    embedder if embed_spec is None else None,
    total_bytes=sum(i["bytes"] for i in described),
  )
  stage = executors.Stage("scan", steps, args.tasks, out / "work" / "logs")
  if not executors.run(args, [stage], args.workers, "decontam", stage.logging_dir, log=_log):
    return {}  # submitted to SLURM: the message says how to follow the jobs
  report = report_lib.build(out, args.tasks, index, bench_info, flags, args.results)
  counts = report["counts"]
  kept_by_input = counts.get("kept_by_input", {})
  outputs = [
    {
      "input": inp["path"],
      "folder": str(out / "clean" / name),
      "kept": kept_by_input.get(name, 0),
      "shards": sorted(p.name for p in (out / "clean" / name).glob("*.jsonl.gz")),
    }
    for inp, name in zip(described, input_names(described))
  ]
  manifest = {
    "format": FORMAT,
    "fingerprint": fingerprint,
    "inputs": [{k: v for k, v in i.items() if not k.startswith("_")} for i in described],
    "benchmarks": bench_info,
    "flags": flags,
    "documents": counts["documents"],
    "kept": counts["kept"],
    "removed": counts["removed"],
    "bad": counts["bad"],
    "bad_items": counts["bad_items"],
    "bytes": counts["bytes"],
    "removed_by": counts["removed_by"],
    "flagged_by": counts["flagged_by"],
    "outputs": outputs,
    "seconds": round(time.time() - start, 2),
  }
  tmp = out / ".manifest.json.tmp"
  tmp.write_text(json.dumps(manifest, indent=2) + "\n")
  os.replace(tmp, out / "manifest.json")  # last: its presence means the output is complete
  lock.close()
  return manifest


def _log(line: str) -> None:
  print(line, file=sys.stderr)


def _thresholds(args):
  from phi1_jax.decontam.index import Thresholds

  return Thresholds(
    ngram=args.ngram,
    ngram_min_hits=args.ngram_min_hits,
    ast_tau=args.ast_tau,
    ast_min_nodes=args.ast_min_nodes,
    exact_min_chars=args.exact_min_chars,
    embed_max_l2=args.embed_max_l2,
  )


def main(argv=None) -> int:
  try:
    manifest = run(argv)
  except UserError as e:
    return report_error(PROG, e)
  except executors.StagesIncomplete as e:
    print(f"{PROG}: {e}", file=sys.stderr)
    return 1
  if manifest:
    for o in manifest["outputs"]:
      print(f"{o['input']}: {o['kept']} documents kept -> {o['folder']}/")
    print(
      f"{manifest['documents']} documents: {manifest['kept']} kept, {manifest['removed']} removed "
      f"({', '.join(f'{m} {n}' for m, n in manifest['removed_by'].items())}), "
      f"{manifest['bad']} bad items passed over (not UTF-8, not JSON, no text)"
    )
  return 0


if __name__ == "__main__":  # datatrove's worker pool re-imports this module: work only here
  from phi1_jax import cli

  sys.exit(cli.run_command(main, kept="the completed tasks are kept"))
