"""An OpenAI-compatible HTTP server with continuous batching for any phi1_jax or Phi checkpoint.

  python -m phi1_jax.serve --checkpoint=CKPT [--host=127.0.0.1] [--port=8000] [--model_name=NAME]
      [--max_batch=16] [--max_queue=256] [--max_seq_len=N] [--dtype=float32|bfloat16] [--tokenizer=PATH]

CKPT is anything `phi1_jax.model.hf.load_params` reads (trainer workdir or step folder, converter
output, transformers folder); the tokenizer is found beside it (`sample.find_tokenizer`).
Endpoints: GET /health (503 while the shapes compile, then 200 with slot and queue counts),
GET /v1/models, POST /v1/completions, POST /v1/chat/completions (`stream=true` for server-sent
events). The HTTP stack is FastAPI on uvicorn; the batching is `phi1_jax.inference.engine` (a thread);
request checks and response shapes are `phi1_jax.inference.openai_api`.

--port=0 takes a free port; the line `serving MODEL on http://HOST:PORT` names it.
"""

import logging
import os
import socket
import sys
import time
from pathlib import Path

from phi1_jax import paths
from phi1_jax.inference.server import build_app

log = logging.getLogger("phi1_jax.serve")
PROG = "python -m phi1_jax.serve"


def _parse_args(argv):
  from phi1_jax.cli import OneLineParser

  p = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="phi1_jax checkpoint, trainer workdir/step or HF folder")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
  p.add_argument("--model_name", default=None, help="the model id clients send (default: the checkpoint's folder name)")
  p.add_argument("--max_batch", type=int, default=16, help="slots: sequences decoded together")
  p.add_argument("--max_queue", type=int, default=256, help="sequences that may wait for a slot; more get 429")
  p.add_argument(
    "--max_seq_len", type=int, default=None, help="prompt + completion tokens per slot (default: the model's context)"
  )
  p.add_argument("--dtype", default=None, help="compute dtype: float32, bfloat16 (default: the checkpoint's)")
  p.add_argument("--tokenizer", default=None, help="tokenizer.model / tokenizer.json or its folder")
  p.add_argument("--log_every_s", type=float, default=10.0, help="seconds between load lines")
  p.add_argument(
    "--compile_cache",
    default="~/.cache/phi1_jax/jax_cache",
    help="JAX's persistent compilation cache: a second start skips compiling ('' turns it off; "
    "$JAX_COMPILATION_CACHE_DIR wins)",
  )
  return p.parse_args(argv)


def _check_args(args) -> None:
  for name in ("max_batch", "max_queue"):
    if getattr(args, name) < 1:
      raise ValueError(f"--{name}={getattr(args, name)}: must be >= 1")
  if not 0 <= args.port <= 65535:
    raise ValueError(f"--port={args.port}: must be in [0, 65535]")
  if args.max_seq_len is not None and args.max_seq_len < 2:
    raise ValueError(f"--max_seq_len={args.max_seq_len}: must be >= 2")
  if args.dtype not in (None, "float32", "bfloat16", "float16"):
    raise ValueError(f"--dtype={args.dtype}: must be float32, bfloat16 or float16")
  if args.log_every_s <= 0:
    raise ValueError(f"--log_every_s={args.log_every_s}: must be > 0")


def _bind(host: str, port: int) -> socket.socket:
  """The listening socket, bound before the model loads: a port in use fails at once."""
  try:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
  except socket.gaierror as e:
    raise ValueError(f"--host={host}: cannot be resolved ({e.strerror})") from None
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not for a live listener: only TIME_WAIT
  try:
    sock.bind((host, port))
  except OSError as e:
    sock.close()
    raise ValueError(
      f"cannot listen on {host}:{port}: {e.strerror}"
      + (" (the port is in use; pick another --port)" if e.errno == 98 else "")
    ) from None
  return sock


def main(argv=None) -> int:
  args = _parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
  for name in ("absl", "jax._src.xla_bridge"):  # orbax's restore chatter, "no TPU here"
    logging.getLogger(name).setLevel(logging.WARNING)
  from phi1_jax.inference import sampler as sample

  start = time.perf_counter()
  try:  # every user mistake ends here, in one line, before anything compiles
    _check_args(args)
    sample.check_checkpoint(args.checkpoint)
    sample.find_tokenizer(args.checkpoint, args.tokenizer)
    sock = _bind(args.host, args.port)
    model, tokenizer = sample.load_model_and_tokenizer(args.checkpoint, args.tokenizer, args.dtype)
    max_seq_len = args.max_seq_len or model.cfg.max_seq_len
    if max_seq_len > model.cfg.max_seq_len:
      raise ValueError(f"--max_seq_len={max_seq_len} exceeds the model's context of {model.cfg.max_seq_len}")
  except ValueError as e:  # the loader's and the checks' user errors
    from phi1_jax.cli import report_error

    return report_error(PROG, e)
  import jax
  import uvicorn

  from phi1_jax.inference.engine import Engine

  if args.compile_cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", str(Path(args.compile_cache).expanduser()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  model_name = args.model_name or paths.absolute(args.checkpoint).name
  engine = Engine(
    model,
    tokenizer,
    max_batch=args.max_batch,
    max_queue=args.max_queue,
    max_seq_len=max_seq_len,
    log_every_s=args.log_every_s,
  )
  log.info(
    "loaded %s (%d layers, d_model %d, %s) in %.1fs; compiling %d slots x %d tokens",
    args.checkpoint,
    model.cfg.n_layers,
    model.cfg.d_model,
    model.cfg.dtype,
    time.perf_counter() - start,
    args.max_batch,
    max_seq_len,
  )
  engine.start()
  app = build_app(engine, tokenizer, model_name, max_seq_len)
  host, port = sock.getsockname()[:2]
  shown = f"[{host}]" if ":" in host else host
  log.info("serving %s on http://%s:%d (GET /health answers 200 once compiled)", model_name, shown, port)
  server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2))
  try:  # uvicorn's signal handling: a graceful shutdown, then SIGINT ends it with 0 and SIGTERM with 143
    server.run(sockets=[sock])
  except KeyboardInterrupt:  # asyncio re-raises the SIGINT uvicorn handled; uvicorn.run passes it too
    pass
  engine.stop()
  return 0


if __name__ == "__main__":
  try:
    code = main()
  except KeyboardInterrupt:  # SIGINT before uvicorn took the signals over (loading the model)
    print("stopped by SIGINT before the server started", file=sys.stderr)
    code = 130
  # No interpreter teardown: the engine thread may still be compiling (a signal during warm-up),
  # and tearing the interpreter down under it aborts ("terminate called ...", exit 134) or hangs.
  logging.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)
