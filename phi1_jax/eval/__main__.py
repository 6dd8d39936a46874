r"""Sample a checkpoint on HumanEval or MBPP, execute the samples and score them.

  python -m phi1_jax.eval --checkpoint=CKPT --benchmark=humaneval --n_samples=1 --temperature=0 --out=DIR

CKPT: a converter output (params/ + model_config.json), a trainer workdir or step folder, or a
Hugging Face save_pretrained folder (config.json + *.safetensors). The tokenizer defaults to a
tokenizer.model / tokenizer.json in the checkpoint folder (or the trainer workdir, or their
`tokenizer/` subfolder). Writes DIR/samples.jsonl (task_id, completion),
DIR/samples.jsonl_results.jsonl (+ result, passed) and DIR/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from phi1_jax import paths
from phi1_jax.eval import sandbox as sandbox_lib

OUT_FILES = ("samples.jsonl", "samples.jsonl_results.jsonl", "summary.json")


def _parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m phi1_jax.eval", description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="phi1_jax checkpoint, trainer workdir/step or HF folder")
  parser.add_argument("--benchmark", required=True, choices=["humaneval", "mbpp"])
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
  parser.add_argument("--check_every", type=int, default=32, help="tokens between host stop-sequence checks")
  parser.add_argument("--timeout", type=float, default=3.0, help="seconds per executed program")
  parser.add_argument("--workers", type=int, default=os.cpu_count(), help="programs run at once")
  parser.add_argument("--k", default="1,10,100", help="pass@k values (those <= n_samples are reported)")
  sandbox_lib.add_argument(parser)
  return parser.parse_args(argv)


def _check_args(args) -> list[int]:
  """ValueError naming the first bad flag; returns the ks."""
  positive = ("n_samples", "max_new_tokens", "batch_size", "check_every", "workers")
  for name in positive:
    if getattr(args, name) < 1:
      raise ValueError(f"--{name}={getattr(args, name)}: must be >= 1")
  if args.limit is not None and args.limit < 1:
    raise ValueError(f"--limit={args.limit}: must be >= 1")
  if args.temperature < 0:
    raise ValueError(f"--temperature={args.temperature}: must be >= 0")
  if args.temperature == 0 and args.n_samples > 1:
    raise ValueError(f"--n_samples={args.n_samples} with --temperature=0 repeats one greedy sample; "
                     "give --temperature > 0")
  if not 0 < args.top_p <= 1:
    raise ValueError(f"--top_p={args.top_p}: must be in (0, 1]")
  if args.top_k < 0:
    raise ValueError(f"--top_k={args.top_k}: must be >= 0")
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
  if args.benchmark == "humaneval":
    problems = problems_lib.load_humaneval()
    ids = sorted(problems, key=lambda t: int(t.split("/")[-1]))
  else:
    if not args.mbpp_path:
      raise ValueError("--benchmark=mbpp needs --mbpp_path=FILE.jsonl")
    if not Path(args.mbpp_path).is_file():
      raise ValueError(f"--mbpp_path={args.mbpp_path}: file not found")
    problems = problems_lib.load_mbpp(args.mbpp_path, args.mbpp_split, args.mbpp_prompt)
    ids = sorted(problems, key=lambda t: int(t.split("/")[-1]))
  if args.limit is not None:
    ids = ids[:args.limit]
  return {t: problems[t] for t in ids}


def _checkpoint_kind(path) -> str:
  """'hf' or 'params'; ValueError if `path` is neither (nothing is loaded)."""
  problem = paths.bucket_problem(path)
  if problem:
    raise ValueError(f"--checkpoint={path}: {problem}")
  if not path.exists():
    raise ValueError(f"--checkpoint={path}: not found")
  if (path / "config.json").is_file() and not (path / "model_config.json").is_file():
    return "hf"
  from phi1_jax import convert
  convert.find_params_checkpoint(path)  # raises ValueError naming what is missing
  return "params"


def _tokenizer_path(args, ckpt: Path) -> Path:
  from phi1_jax.data.tokenizer import checkpoint_tokenizer, tokenizer_file
  if args.tokenizer:
    try:
      return tokenizer_file(args.tokenizer)
    except FileNotFoundError as e:
      raise ValueError(f"--tokenizer: {e}") from None
  found = checkpoint_tokenizer(ckpt)
  if found:
    return found
  raise ValueError(f"no tokenizer.model or tokenizer.json in {ckpt} (or its tokenizer/ folder); "
                   "pass --tokenizer=PATH")


def _check_out(out: Path, given: str) -> None:
  from phi1_jax.cli import out_dir_problem
  if paths.is_remote(given):
    raise ValueError(f"--out={given}: write results to a local folder (then copy them up: gcloud storage cp -r)")
  problem = out_dir_problem(out)
  if problem:
    raise ValueError(f"--out={out}: {problem}")
  taken = [f for f in OUT_FILES if (out / f).exists()]
  if taken:
    raise ValueError(f"--out={out}: already holds {taken[0]}; choose a new folder")


def _load_model(ckpt: Path, kind: str):
  from phi1_jax import convert
  if kind == "hf":
    return convert.load_hf(ckpt)[1]
  return convert.model_from_params(*convert.load_params(ckpt))


def main(argv=None) -> int:
  from phi1_jax.data.tokenizer import load_tokenizer
  args = _parse_args(argv)
  ckpt = paths.as_path(args.checkpoint)
  out = Path(args.out)
  try:  # every user mistake ends here, before the model is loaded
    ks = _check_args(args)
    problems = _load_problems(args)
    kind = _checkpoint_kind(ckpt)
    tok_path = _tokenizer_path(args, ckpt)
    tokenizer = load_tokenizer(tok_path)
    _check_out(out, args.out)
    sandbox_lib.check(args.sandbox)  # after the flags: where bubblewrap is missing, other mistakes show first
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  import tqdm
  from phi1_jax import sample
  from phi1_jax.eval import execute, problems as problems_lib

  start = time.perf_counter()
  try:
    model = _load_model(ckpt, kind)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if tokenizer.vocab_size > model.cfg.vocab_size:
    print(f"error: tokenizer {tok_path} has {tokenizer.vocab_size} tokens, the model only "
          f"{model.cfg.vocab_size}", file=sys.stderr)
    return 2
  load_s = time.perf_counter() - start
  print(f"loaded {ckpt} ({kind}) and {tok_path} in {load_s:.1f}s", file=sys.stderr)

  if args.benchmark == "humaneval":
    stops = problems_lib.STOP_SEQUENCES
  else:
    stops = problems_lib.mbpp_stop_sequences(args.mbpp_prompt)
  ids = [t for t in problems for _ in range(args.n_samples)]
  greedy = args.temperature == 0
  start = time.perf_counter()
  with tqdm.tqdm(total=len(ids), desc="sampling", unit="sample", file=sys.stderr) as bar:
    completions = sample.sample_texts(
        model, tokenizer, [problems[t].prompt for t in ids], stop_sequences=stops,
        batch_size=min(args.batch_size, len(ids)), max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=1.0 if greedy else args.top_p, top_k=0 if greedy else args.top_k,
        seed=args.seed, check_every=args.check_every, progress=bar.update)
  sample_s = time.perf_counter() - start
  samples = [{"task_id": t, "completion": problems_lib.truncate_completion(c, stops)}
             for t, c in zip(ids, completions)]

  out.mkdir(parents=True, exist_ok=True)
  _write_jsonl(out / "samples.jsonl", samples)
  rows, summary = execute.evaluate_samples(args.benchmark, samples, problems, ks=ks, timeout_s=args.timeout,
                                           workers=args.workers, progress=True, sandbox=args.sandbox)
  _write_jsonl(out / "samples.jsonl_results.jsonl", rows)
  summary.update({
      "checkpoint": str(ckpt), "tokenizer": str(tok_path), "n_samples_per_problem": args.n_samples,
      "temperature": args.temperature, "top_p": args.top_p if not greedy else 1.0,
      "top_k": args.top_k if not greedy else 0, "max_new_tokens": args.max_new_tokens,
      "batch_size": args.batch_size, "limit": args.limit, "seed": args.seed,
      "sampling_seconds": round(sample_s, 3),
  })
  if args.benchmark == "mbpp":
    summary.update({"mbpp_path": args.mbpp_path, "mbpp_split": args.mbpp_split, "mbpp_prompt": args.mbpp_prompt})
  (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  print(f"wrote {out / 'samples.jsonl'}, its _results.jsonl and {out / 'summary.json'}", file=sys.stderr)
  print(json.dumps({k: v for k, v in summary.items() if k.startswith("pass@")}))
  return 0


def _write_jsonl(path: Path, rows: list[dict]) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  os.replace(tmp, path)  # a killed run never leaves a half-written file


if __name__ == "__main__":
  sys.exit(main())
