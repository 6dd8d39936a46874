"""`python -m phi1_jax.sample`: completions of one prompt (the machinery is phi1_jax.inference.sampler)."""

import sys
import time

from phi1_jax.cli import OneLineParser, report_error
from phi1_jax.inference.sampler import load_model_and_tokenizer, sample_texts

PROG = "python -m phi1_jax.sample"


def _parse_args(argv):
  parser = OneLineParser(prog=PROG, description="Sample completions of one prompt.")
  parser.add_argument("--checkpoint", required=True, help="phi1_jax checkpoint, trainer workdir/step or HF folder")
  parser.add_argument("--prompt", required=True, help="the prompt text ('-' reads stdin)")
  parser.add_argument("--max_tokens", type=int, default=128, help="new tokens at most")
  parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
  parser.add_argument("--top_p", type=float, default=1.0)
  parser.add_argument("--top_k", type=int, default=0, help="0 keeps every token")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--n", type=int, default=1, help="completions (needs --temperature > 0 for n > 1)")
  parser.add_argument("--stop", action="append", default=[], help="stop string (repeat for several)")
  parser.add_argument("--tokenizer", default=None, help="tokenizer.model / tokenizer.json or its folder")
  parser.add_argument("--dtype", default=None, help="compute dtype (float32, bfloat16); default: the checkpoint's")
  return parser.parse_args(argv)


def _check_args(args) -> None:
  if args.max_tokens < 1:
    raise ValueError(f"--max_tokens={args.max_tokens}: must be >= 1")
  if args.temperature < 0:
    raise ValueError(f"--temperature={args.temperature}: must be >= 0")
  if not 0 < args.top_p <= 1:
    raise ValueError(f"--top_p={args.top_p}: must be in (0, 1]")
  if args.top_k < 0:
    raise ValueError(f"--top_k={args.top_k}: must be >= 0")
  if args.n < 1:
    raise ValueError(f"--n={args.n}: must be >= 1")
  if args.n > 1 and args.temperature == 0:
    raise ValueError(f"--n={args.n} with --temperature=0 repeats one greedy completion; give --temperature > 0")
  if not args.prompt:
    raise ValueError("--prompt is empty")
  if args.dtype not in (None, "float32", "bfloat16", "float16"):
    raise ValueError(f"--dtype={args.dtype}: must be float32, bfloat16 or float16")


def main(argv=None) -> int:
  args = _parse_args(argv)
  if args.prompt == "-":
    args.prompt = sys.stdin.read()
  start = time.perf_counter()
  try:  # every user mistake ends here, in one line
    _check_args(args)
    model, tokenizer = load_model_and_tokenizer(args.checkpoint, args.tokenizer, args.dtype)
    n_prompt = len(tokenizer.encode(args.prompt))
    if n_prompt == 0:
      raise ValueError("--prompt encodes to no tokens")
    if n_prompt + args.max_tokens > model.cfg.max_seq_len:
      raise ValueError(
        f"prompt ({n_prompt} tokens) + --max_tokens={args.max_tokens} exceeds the model's "
        f"context of {model.cfg.max_seq_len} tokens"
      )
  except ValueError as e:  # the loader's and the checks' user errors
    return report_error(PROG, e)
  print(f"loaded {args.checkpoint} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
  start = time.perf_counter()
  texts = sample_texts(
    model,
    tokenizer,
    [args.prompt] * args.n,
    stop_sequences=args.stop,
    batch_size=args.n,
    max_new_tokens=args.max_tokens,
    temperature=args.temperature,
    top_p=args.top_p,
    top_k=args.top_k,
    seed=args.seed,
  )
  for i, text in enumerate(texts):
    if args.n > 1:
      print(f"### completion {i + 1} of {args.n}")
    print(text)
  print(
    f"sampled {args.n} x up to {args.max_tokens} tokens in {time.perf_counter() - start:.1f}s (compilation included)",
    file=sys.stderr,
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
