"""Serving throughput: continuous batching against one request at a time and against one direct
`phi1_jax.inference.sampler.generate` call on the same batch.

  PYTHONPATH=. python benchmarks/serve_throughput.py [--clients=32 --d_model=128 --n_layers=4 ...]

Makes a random-weight checkpoint of the given shape with a small SentencePiece tokenizer in a
temporary folder, starts `python -m phi1_jax.serve` on it (a subprocess on 127.0.0.1,
--max_batch=clients) and sends the same greedy requests (token-id prompts of mixed lengths, mixed
max_tokens) three ways, interleaved, best of --repeats each:

  concurrent  all clients at once (threads, the official openai client), continuous batching
  sequential  the same requests one after another
  direct      one generate() call in this process on the same prompts (max_new_tokens = the
              largest max_tokens), with the server idle: the floor the server's overhead is measured on
  engine      (also) the server's batching engine in this process, no HTTP: all requests submitted
              at once to `phi1_jax.inference.engine.Engine` (its own thread, --clients slots)

Prints each mode's seconds and completion tokens/s, the ratios, and whether all gave the same
text (greedy: they must).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _make_checkpoint(out: Path, args) -> None:
  from flax import nnx

  from phi1_jax.model import checkpoint
  from phi1_jax.data.tokenizer import train_tokenizer
  from phi1_jax.model.phi import ModelConfig, Phi

  train_tokenizer([REPO / "phi1_jax"], args.tokenizer_vocab, out / "tok")
  cfg = ModelConfig(
    vocab_size=args.vocab_size,
    d_model=args.d_model,
    n_layers=args.n_layers,
    n_heads=args.n_heads,
    head_dim=args.d_model // args.n_heads,
    mlp_dim=4 * args.d_model,
    rotary_dim=16,
    max_seq_len=args.max_seq_len,
    eos_id=0,
    dtype=args.dtype,
    scan_layers=args.n_layers > 8,
  )
  checkpoint.save_params(out / "ckpt", cfg, nnx.to_pure_dict(nnx.state(Phi(cfg, rngs=nnx.Rngs(0)), nnx.Param)))
  (out / "ckpt" / "tokenizer.model").write_bytes((out / "tok" / "tokenizer.model").read_bytes())


def _start_server(ckpt: Path, log_path: Path, args) -> tuple[subprocess.Popen, str]:
  log_file = open(log_path, "w")
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "phi1_jax.serve",
      f"--checkpoint={ckpt}",
      "--port=0",
      f"--max_batch={args.clients}",
      f"--max_queue={args.clients}",
      "--log_every_s=60",
    ],
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": str(REPO)},
    stdout=log_file,
    stderr=subprocess.STDOUT,
  )
  deadline, url = time.time() + 900, None
  while time.time() < deadline:
    if proc.poll() is not None:
      raise SystemExit(f"server exited {proc.returncode}:\n{log_path.read_text()}")
    if url is None:
      found = re.search(r"serving \S+ on (http://127\.0\.0\.1:\d+)", log_path.read_text())
      url = found and found.group(1)
    else:
      try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
          if r.status == 200:
            return proc, url
      except OSError:
        pass
    time.sleep(0.5)
  raise SystemExit(f"server not ready:\n{log_path.read_text()}")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--clients", type=int, default=32)
  ap.add_argument("--vocab_size", type=int, default=4096)
  ap.add_argument("--tokenizer_vocab", type=int, default=1000)
  ap.add_argument("--d_model", type=int, default=128)
  ap.add_argument("--n_layers", type=int, default=4)
  ap.add_argument("--n_heads", type=int, default=4)
  ap.add_argument("--max_seq_len", type=int, default=128)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--min_prompt", type=int, default=4)
  ap.add_argument("--max_prompt", type=int, default=60)
  ap.add_argument("--min_tokens", type=int, default=16)
  ap.add_argument("--max_tokens", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=2)
  args = ap.parse_args()
  if args.max_prompt + args.max_tokens > args.max_seq_len:
    raise SystemExit("--max_prompt + --max_tokens must be <= --max_seq_len")

  import openai

  from phi1_jax.inference import sampler as sample
  from phi1_jax.model import checkpoint

  work = Path(tempfile.mkdtemp(prefix="serve_bench_"))
  _make_checkpoint(work, args)
  model, tok = checkpoint.load_model_and_tokenizer(work / "ckpt")
  rng = np.random.RandomState(0)
  prompts = [
    rng.randint(1, tok.vocab_size, n).tolist() for n in rng.randint(args.min_prompt, args.max_prompt + 1, args.clients)
  ]
  max_tokens = rng.randint(args.min_tokens, args.max_tokens + 1, args.clients).tolist()

  start = time.perf_counter()
  proc, url = _start_server(work / "ckpt", work / "server.log", args)
  print(f"server ready in {time.perf_counter() - start:.1f}s ({args.clients} slots, max_seq_len {args.max_seq_len})")
  client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)

  def ask(i):
    a = client.completions.create(model="ckpt", prompt=prompts[i], max_tokens=max_tokens[i], temperature=0)
    return a.choices[0].text, a.usage.completion_tokens

  def health():
    with urllib.request.urlopen(f"{url}/health", timeout=30) as r:
      return json.loads(r.read())

  def concurrent_run():
    steps = health()["decode_steps"]
    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
      out = list(pool.map(ask, range(args.clients)))
    print(f"concurrent run: {health()['decode_steps'] - steps} decode steps (direct: {max(max_tokens)})")
    return out

  def sequential_run():
    return [ask(i) for i in range(args.clients)]

  def direct_run():
    rows = sample.generate(
      model, prompts, max_new_tokens=max(max_tokens), eos_id=tok.eos_id, vocab_limit=tok.vocab_size
    )
    return [(tok.decode(r[:m]), min(len(r) + 1, m)) for r, m in zip(rows, max_tokens)]

  from phi1_jax.inference import engine as engine_lib

  eng = engine_lib.Engine(model, tok, max_batch=args.clients, max_queue=args.clients, max_seq_len=args.max_seq_len)
  eng.start()

  def engine_run():
    done = threading.Semaphore(0)
    texts = [""] * args.clients

    def emit(i, delta):
      texts[i] += delta.text
      if delta.finish_reason:
        done.release()

    seqs = [
      engine_lib.Sequence(p, engine_lib.Params(max_tokens=m), functools.partial(emit, i))
      for i, (p, m) in enumerate(zip(prompts, max_tokens))
    ]
    eng.submit(seqs)
    for _ in seqs:
      done.acquire()
    return [(t, s.n_generated) for t, s in zip(texts, seqs)]

  while not eng.ready:
    time.sleep(0.1)
  try:
    runs = {"concurrent": concurrent_run, "sequential": sequential_run, "direct": direct_run, "engine": engine_run}
    answers = {name: fn() for name, fn in runs.items()}  # warm-up: compiles generate, connects clients
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
      for name, fn in runs.items():  # interleaved, so a noisy neighbour slows all alike
        t = time.perf_counter()
        answers[name] = fn()
        times[name].append(time.perf_counter() - t)
  finally:
    proc.terminate()
    proc.wait(30)
  tokens = sum(n for _, n in answers["concurrent"])
  same = all([t for t, _ in answers[name]] == [t for t, _ in answers["direct"]] for name in runs)
  best = {name: min(t) for name, t in times.items()}
  print(
    json.dumps(
      {
        "clients": args.clients,
        "completion_tokens": tokens,
        "model": {k: getattr(args, k) for k in ("d_model", "n_layers", "vocab_size", "dtype")},
      }
    )
  )
  for name, t in best.items():
    print(f"{name:>10}: {t:7.3f}s  {tokens / t:9.1f} tokens/s")
  print(f"concurrent / sequential speed-up: {best['sequential'] / best['concurrent']:.2f}x")
  print(f"server overhead over direct generate: {best['concurrent'] / best['direct'] - 1:+.1%}")
  print(f"engine (no HTTP) overhead over direct generate: {best['engine'] / best['direct'] - 1:+.1%}")
  print(f"same greedy text in all four: {same}")


if __name__ == "__main__":
  main()
