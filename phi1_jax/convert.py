"""`python -m phi1_jax.convert`: Hugging Face folder <-> phi1_jax checkpoint (the machinery is phi1_jax.model.hf)."""

import json
import sys
from pathlib import Path

from phi1_jax import paths
from phi1_jax.cli import OneLineParser, report_error
from phi1_jax.model.hf import hf_to_orbax, orbax_to_hf

PROG = "python -m phi1_jax.convert"


def main(argv=None) -> int:
  parser = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
  to_orbax = commands.add_parser("hf-to-orbax", help="transformers save_pretrained folder -> phi1_jax checkpoint")
  to_orbax.add_argument("--hf_dir", required=True, help="folder with config.json and *.safetensors")
  to_orbax.add_argument("--out", required=True, help="new (or empty) folder for params/ and model_config.json")
  to_hf = commands.add_parser("orbax-to-hf", help="phi1_jax checkpoint -> transformers folder")
  to_hf.add_argument(
    "--checkpoint", required=True, help="converter output, trainer step folder (checkpoints/<step>) or trainer workdir"
  )
  to_hf.add_old_name("--ckpt", "--checkpoint")  # its name before every command said --checkpoint
  to_hf.add_argument("--out", required=True, help="new (or empty) folder for config.json and model.safetensors")
  args = parser.parse_args(argv)
  source = args.hf_dir if args.command == "hf-to-orbax" else args.checkpoint
  problem = paths.bucket_problem(source)
  if problem:
    return report_error(f"{PROG} {args.command}", f"{source}: {problem}")
  try:
    if args.command == "hf-to-orbax":
      cfg = hf_to_orbax(args.hf_dir, args.out)
    else:
      cfg = orbax_to_hf(args.checkpoint, args.out)
  except (ValueError, OSError, json.JSONDecodeError) as e:
    return report_error(f"{PROG} {args.command}", e)
  print(
    f"wrote {args.out} ({cfg.n_layers} layers, d_model {cfg.d_model}, vocab {cfg.vocab_size})"
    + (" with its tokenizer" if (Path(args.out) / "tokenizer.json").is_file() else "")
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
