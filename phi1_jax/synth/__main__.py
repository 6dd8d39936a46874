"""Synthetic textbooks and CodeExercises through any OpenAI-compatible endpoint.

    python -m phi1_jax.synth textbooks --n=N --out=OUT --base_url=URL --model=NAME [--seed=S]
        [--concurrency=K] [--topics=FILE] [--max_tokens_total=T] [--tasks=T --workers=W]
    python -m phi1_jax.synth exercises --n=N --out=OUT --base_url=URL --model=NAME [...]

Writes OUT/{textbooks,exercises}-RANK.jsonl (`{"id", "text", "source", "meta"}`, packable with
`phi1_jax.data.pack`) and OUT/manifest.json (counts, rejections by reason, near duplicates,
tokens, diversity, config). Runs as a datatrove pipeline (the synthesis step, then its
JsonlWriter) on the local executor. Safe to kill and rerun: paid answers replay from
OUT/llm_cache.sqlite, so the rerun pays for nothing twice and writes exactly --n documents.
A cap (--max_tokens_total, --max_requests) stops the run cleanly with what was paid for written;
rerun with a higher cap to finish. SIGINT or SIGTERM stops it within seconds (one line, exit 130,
no process left behind); an endpoint that failed every request for --give_up_after seconds (60)
stops it with one line naming the last error (exit 2); either way a rerun resumes.
"""

from __future__ import annotations

import collections
import hashlib
import json
import signal
import sqlite3
import sys
import time
from pathlib import Path

from phi1_jax import cli
from phi1_jax.stages import executors
from phi1_jax.cli import OneLineParser
from phi1_jax.eval import sandbox as sandbox_lib

PROG = "python -m phi1_jax.synth"
FORMAT = "phi1_jax.synth/v1"
# Settings that change what is written: a folder holds the output of one of them.
CONTENT_KEYS = (
  "kind",
  "n",
  "seed",
  "model",
  "endpoint",
  "temperature",
  "max_tokens",
  "topics_sha256",
  "template_sha256",
  "prompt_parts_sha256",
  "min_chars",
  "tasks",
  "exec_timeout",
)


def _parse_args(argv):
  from phi1_jax.stages import llm as llm_lib

  parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
  kinds = parser.add_subparsers(dest="kind", required=True, parser_class=OneLineParser)
  for kind, max_tokens in (("textbooks", 2048), ("exercises", 1024)):
    sub = kinds.add_parser(kind)
    sub.add_argument("--n", type=int, required=True, help="documents to write")
    sub.add_argument("--out", required=True, help="output folder")
    sub.add_argument("--seed", type=int, default=0, help="prompt i depends only on (seed, i)")
    sub.add_argument("--topics", default=None, help="topics file (default: the package's topics.txt)")
    sub.add_argument(
      "--template", default=None, help="prompt template file with str.format fields such as {topic} (default: built in)"
    )
    sub.add_argument("--endpoint", default="chat", choices=["chat", "completion"])
    sub.add_argument("--temperature", type=float, default=0.8)
    sub.add_argument("--max_tokens", type=int, default=max_tokens, help="tokens per answer")
    sub.add_argument(
      "--max_prompts", type=int, default=None, help="give up after this many prompts (default: 4 x n + 16)"
    )
    sub.add_argument("--tasks", type=int, default=1, help="datatrove tasks (near duplicates are found within a task)")
    sub.add_argument("--workers", type=int, default=1, help="tasks run at once")
    if kind == "textbooks":
      sub.add_argument("--min_chars", type=int, default=1000, help="shortest textbook kept")
    else:
      sub.add_argument("--exec_timeout", type=float, default=3.0, help="seconds for an exercise's own tests")
      sandbox_lib.add_argument(sub)
    llm_lib.add_args(sub)
  return parser.parse_args(argv)


def _sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _config(args) -> dict:
  from phi1_jax.synth import prompts

  topics_path = Path(args.topics) if args.topics else prompts.DEFAULT_TOPICS
  topics = prompts.load_topics(topics_path)  # raises UserError naming the problem
  template = prompts.load_template(args.template, args.kind) if args.template else None
  return {
    "kind": args.kind,
    "n": args.n,
    "seed": args.seed,
    "model": args.model,
    "endpoint": args.endpoint,
    "temperature": args.temperature,
    "max_tokens": args.max_tokens,
    "topics_path": str(topics_path.resolve()),
    "topics_sha256": _sha256(topics_path),
    "topics": len(topics),
    "prompt_parts_sha256": _sha256(prompts.PROMPT_PARTS),
    "template_path": str(Path(args.template).resolve()) if template else None,
    "template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
    "min_chars": getattr(args, "min_chars", None),
    "exec_timeout": getattr(args, "exec_timeout", None),
    "sandbox": getattr(args, "sandbox", None),
    "tasks": args.tasks,
    "workers": args.workers,
    "max_prompts": args.max_prompts if args.max_prompts is not None else 4 * args.n + 16,
    "base_url": args.base_url,
    "concurrency": args.concurrency,
    "max_requests": args.max_requests,
    "max_tokens_total": args.max_tokens_total,
  }


def _check(args) -> None:
  from phi1_jax.stages import llm as llm_lib

  if args.n < 1:
    raise cli.UserError(f"--n must be >= 1, got {args.n}")
  for name in ("tasks", "workers", "max_tokens"):
    if getattr(args, name) < 1:
      raise cli.UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
  if args.max_prompts is not None and args.max_prompts < args.n:
    raise cli.UserError(f"--max_prompts must be >= --n ({args.n}), got {args.max_prompts}")
  if args.tasks > args.n:
    raise cli.UserError(f"--tasks ({args.tasks}) must not exceed --n ({args.n})")
  try:
    llm_lib.check_args(args)
  except llm_lib.LLMError as error:
    raise cli.UserError(str(error)) from None
  out = Path(args.out)
  if out.exists() and not out.is_dir():
    raise cli.UserError(f"--out {out}: exists and is not a folder")
  if args.kind == "exercises":
    try:
      sandbox_lib.check(args.sandbox)
    except sandbox_lib.Unavailable as error:
      raise cli.UserError(str(error)) from None


def _claim_out(out: Path, config: dict) -> tuple[str, dict | None]:
  """The run's fingerprint; refuses a folder holding anything but this run's output."""
  content = {key: config[key] for key in CONTENT_KEYS}
  fingerprint = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
  state = out / ".synth" / "config.json"
  if state.is_file():
    previous = json.loads(state.read_text())
    if previous["fingerprint"] != fingerprint:
      differ = [k for k in CONTENT_KEYS if previous["content"].get(k) != content[k]]
      raise cli.UserError(
        f"--out {out} holds a synthesis run with other settings (differs in {', '.join(differ)}); use "
        f"another --out (add --cache={out / 'llm_cache.sqlite'} to reuse its paid answers)"
      )
  elif out.is_dir() and any(out.iterdir()):
    raise cli.UserError(f"--out {out}: folder is not empty and holds no synthesis run; nothing was touched")
  manifest_path = out / "manifest.json"
  manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
  state.parent.mkdir(parents=True, exist_ok=True)
  from phi1_jax.synth.generate import write_json_atomic

  write_json_atomic(state, {"fingerprint": fingerprint, "content": content})
  return fingerprint, manifest


def build_executor(args, config: dict, out: Path):
  """The datatrove pipeline (synthesize -> JSONL) on the local executor."""
  from datatrove.executor import LocalPipelineExecutor
  from datatrove.pipeline.writers import JsonlWriter
  from phi1_jax.synth.generate import Synthesize, jsonl_adapter

  llm_options = {
    "base_url": args.base_url,
    "cache_path": str(Path(args.cache or out / "llm_cache.sqlite")),
    "api_key_env": args.api_key_env,
    "concurrency": args.concurrency,
    "timeout_s": args.timeout,
    "max_attempts": args.max_attempts,
    "backoff_base_s": args.backoff_s,
    "max_requests": args.max_requests,
    "max_tokens_total": args.max_tokens_total,
    "metrics_path": str(out / ".synth" / "llm_metrics.jsonl"),
    "give_up_after_s": args.give_up_after,
  }
  step = Synthesize(
    args.kind,
    args.n,
    str(out),
    seed=args.seed,
    topics_path=config["topics_path"],
    template_path=config["template_path"],
    model=args.model,
    endpoint=args.endpoint,
    sampling={"temperature": args.temperature, "max_tokens": args.max_tokens},
    llm_options=llm_options,
    min_chars=config["min_chars"] or 0,
    max_prompts=config["max_prompts"],
    exec_timeout_s=config["exec_timeout"] or 3.0,
    exec_sandbox=config["sandbox"] or "bwrap",
    output_pattern=str(out / f"{args.kind}-{{rank:05d}}.jsonl"),
  )
  writer = JsonlWriter(
    str(out), output_filename=f"{args.kind}-${{rank}}.jsonl", compression=None, adapter=jsonl_adapter
  )
  return LocalPipelineExecutor(
    pipeline=[step, writer], tasks=args.tasks, workers=args.workers, logging_dir=str(out / ".synth" / "logs")
  )


def start_deaf_forkserver() -> None:
  """Starts the forkserver that datatrove's worker pool (--workers > 1) forks from, with SIGINT blocked.

  The workers inherit the block: Ctrl-C, which reaches the whole process group, then stops only
  this process (one line, then cli.run_command kills the workers) instead of printing a traceback
  from each worker. A SIGINT meanwhile waits for the unblock, it is not lost.
  """
  import multiprocess.forkserver

  blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
  try:
    multiprocess.forkserver.ensure_running()
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _read_documents(out: Path, kind: str, tasks: int) -> list[tuple[Path, list[dict]]]:
  files = []
  for rank in range(tasks):
    path = out / f"{kind}-{rank:05d}.jsonl"
    rows = [json.loads(line) for line in path.open()] if path.is_file() else []
    files.append((path, rows))
  return files


def _cache_totals(cache_path: Path) -> dict:
  if not cache_path.is_file():
    return {}
  with sqlite3.connect(cache_path) as db:
    count, prompt, completion = db.execute(
      "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM answers"
    ).fetchone()
  return {"answers": count, "prompt_tokens": prompt, "completion_tokens": completion}


def write_manifest(args, config: dict, fingerprint: str, out: Path, seconds: float) -> dict:
  from phi1_jax.synth import dedup, prompts

  task_stats = []
  for rank in range(args.tasks):
    path = out / ".synth" / "tasks" / f"{rank:05d}.json"
    task_stats.append(json.loads(path.read_text()) if path.is_file() else {"rank": rank, "complete": False})
  files = _read_documents(out, args.kind, args.tasks)
  rows = [row for _, doc_rows in files for row in doc_rows]
  rejected, llm_totals, tokens = collections.Counter(), collections.Counter(), collections.Counter()
  retries, failures = collections.Counter(), collections.Counter()
  for stats in task_stats:
    rejected.update(stats.get("rejected", {}))
    summary = stats.get("llm", {})
    for key in ("requests_sent", "answers_paid", "answers_cached", "failed", "not_sent_over_cap"):
      llm_totals[key] += summary.get(key, 0)
    tokens.update(summary.get("tokens", {}))
    retries.update(summary.get("retries", {}))
    failures.update(summary.get("failures", {}))
  for row in rows:
    for key, value in row["meta"]["usage"].items():
      tokens[f"{key}_in_documents"] += value
  parts = prompts.load_parts()
  diversity = dedup.diversity_report(
    [row["text"] for row in rows],
    [row["meta"] for row in rows],
    dedup.MinHasher(work_dir=str(out / ".synth" / "minhash")),
    topics_total=config["topics"],
    audiences_total=len(parts["audiences"]) if args.kind == "textbooks" else None,
  )
  complete = len(rows) == args.n and all(s.get("complete") for s in task_stats)
  manifest = {
    "format": FORMAT,
    "kind": args.kind,
    "fingerprint": fingerprint,
    "complete": complete,
    "stopped_by": sorted({s["stopped_by"] for s in task_stats if s.get("stopped_by")}),
    "config": config,
    "inputs": {
      "topics": {"path": config["topics_path"], "sha256": config["topics_sha256"], "topics": config["topics"]},
      "prompt_parts": {"path": str(prompts.PROMPT_PARTS), "sha256": config["prompt_parts_sha256"]},
    },
    "outputs": [
      {"path": path.name, "documents": len(doc_rows), "sha256": _sha256(path) if path.is_file() else None}
      for path, doc_rows in files
    ],
    "counts": {
      "requested": args.n,
      "written": len(rows),
      "prompts": sum(s.get("prompts", 0) for s in task_stats),
      "rejected": dict(sorted(rejected.items())),
      "near_duplicates": rejected.get("near_duplicate", 0),
      "unused_answers": sum(s.get("unused_answers", 0) for s in task_stats),
    },
    "tokens": dict(sorted(tokens.items())),
    "llm": {**llm_totals, "retries": dict(retries), "failures": dict(failures), "note": "from each task's latest run"},
    "spend": {"cache": _cache_totals(Path(args.cache or out / "llm_cache.sqlite"))},
    "diversity": diversity,
    "seconds": round(seconds, 2),
  }
  if args.kind == "exercises":
    executed = sum(s.get("executed", 0) for s in task_stats)
    passed = sum(s.get("passed_tests", 0) for s in task_stats)
    manifest["exercises"] = {
      "executed": executed,
      "passed_own_tests": passed,
      "pass_rate": round(passed / executed, 4) if executed else None,
      "sandbox": sandbox_lib.check(args.sandbox, quiet=True),
    }
  from phi1_jax.synth.generate import write_json_atomic

  write_json_atomic(out / "manifest.json", manifest)
  return manifest


def _report(manifest: dict, out: Path) -> None:
  from phi1_jax.stages import llm as llm_lib

  counts, diversity = manifest["counts"], manifest["diversity"]
  failures = manifest["llm"].get("failures")  # why requests failed, e.g. HTTP 400: a prompt too long for the model
  failed = f" (failed requests: {llm_lib.describe_failures(failures)})" if failures else ""
  print(
    f"synth: wrote {counts['written']}/{counts['requested']} {manifest['kind']} to {out} "
    f"({counts['prompts']} prompts; rejected {counts['rejected'] or 'none'}{failed}; "
    f"{manifest['tokens'].get('prompt_tokens_paid', 0) + manifest['tokens'].get('completion_tokens_paid', 0)} "
    f"tokens paid this run)"
  )
  if "exercises" in manifest:
    print(f"synth: exercises passing their own tests: {manifest['exercises']}")
  ratios = ", ".join(f"{n}-gram {diversity[f'distinct_{n}gram_ratio']}" for n in (1, 2, 3))
  print(
    f"synth: diversity: {diversity['topics_covered']}/{diversity['topics_total']} topics, "
    f"distinct {ratios}, mean pairwise MinHash similarity {diversity['mean_pairwise_minhash_similarity']}"
  )
  for opening in diversity["top_openings"][:3]:
    print(f"synth:   opening x{opening['count']}: {opening['opening'][:100]!r}")


def main(argv=None) -> int:
  args = _parse_args(argv)
  from phi1_jax.synth.generate import endpoint_error_path

  out = Path(args.out)
  try:
    _check(args)
    config = _config(args)
    fingerprint, manifest = _claim_out(out, config)
  except cli.UserError as error:
    return cli.report_error(f"{PROG} {args.kind}", error)
  if manifest and manifest.get("complete") and manifest.get("fingerprint") == fingerprint:
    print(f"synth: {out} already holds all {args.n} {args.kind} (manifest.json); nothing to do")
    return 0
  start = time.monotonic()
  executor = build_executor(args, config, out)
  endpoint_error = endpoint_error_path(out)
  endpoint_error.unlink(missing_ok=True)
  with executors.stderr_to(out / ".synth" / "logs" / "datatrove.log"):  # datatrove's log lines, not the terminal's
    if args.workers > 1:  # its workers fork from it: started here, their stderr is the log too
      start_deaf_forkserver()
    executor.run()
  # A task stopped by a cap, --max_prompts or the endpoint is not done: forget its completion so a rerun redoes it.
  for rank in range(args.tasks):
    stats_path = out / ".synth" / "tasks" / f"{rank:05d}.json"
    if not stats_path.is_file() or not json.loads(stats_path.read_text()).get("complete"):
      (out / ".synth" / "logs" / "completions" / f"{rank:05d}").unlink(missing_ok=True)
  if endpoint_error.is_file():
    return cli.report_error(f"{PROG} {args.kind}", endpoint_error.read_text())
  manifest = write_manifest(args, config, fingerprint, out, time.monotonic() - start)
  _report(manifest, out)
  if not manifest["complete"]:
    stopped = ", ".join(manifest["stopped_by"]) or "unknown"
    print(
      f"synth: stopped by {stopped}: {manifest['counts']['written']} of {args.n} written; rerun the same "
      "command (with a higher cap) to finish: paid answers are reused, nothing is paid twice"
    )
    return (
      0
      if any(s.startswith("--max_tokens_total") or s.startswith("--max_requests") for s in manifest["stopped_by"])
      else 1
    )
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_command(main, kept="every answer received is kept (llm_cache.sqlite)"))
