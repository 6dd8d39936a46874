"""Curation of code by educational value (the Phi-1 recipe), one command per stage.

  python -m phi1_jax.curate annotate --input=IN --out=ANN --base_url=URL --model=NAME [--sample=N]
  python -m phi1_jax.curate embed --input=IN --checkpoint=CKPT --out=EMB [--sample=N] [--max_len=512]
  python -m phi1_jax.curate train-classifier --annotations=ANN --embeddings=EMB --out=CLS [--threshold=3]
  python -m phi1_jax.curate filter --input=IN --classifier=CLS --out=OUT [--tasks=T] [--workers=W]
      [--executor=local|slurm|ray] [--slurm_partition=P [--slurm_wait]] [--ray_address=ADDR]

IN is JSONL documents `{"id", "text", "source", "meta"}` (.jsonl / .jsonl.gz), .py files or folders
of .py files, as `phi1_jax.data.pack` reads them. Every stage resumes where a killed run stopped
and refuses an --out that holds something else. A user error is one line and exit code 2; `annotate`
exits 1 when every request failed and nothing was annotated before.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from phi1_jax.cli import OneLineParser, UserError, report_error
from phi1_jax.data.sources import add_key_args
from phi1_jax.stages.executors import StagesIncomplete

PROG = "python -m phi1_jax.curate"


def _add_input(p, required=True):
  p.add_argument("--input", nargs="+", required=required, help="JSONL(.gz), .parquet, .py files, folders of them")
  add_key_args(p)


def _add_max_bad(p):
  p.add_argument(
    "--max_bad_fraction",
    type=float,
    default=0.001,
    help="go on past bad items (not UTF-8, not JSON, no text) up to this share of items, as pack does",
  )


def _add_sample(p):
  p.add_argument(
    "--sample", type=int, default=None, help="draw N documents, fixed by --seed and the ids (default: all)"
  )
  p.add_argument("--seed", type=int, default=0)


def parser() -> argparse.ArgumentParser:
  # Imported here, not at the top: datatrove's worker processes re-import this module, and they
  # need neither the openai client nor the parser.
  from phi1_jax.stages import executors
  from phi1_jax.stages import llm as llm_lib

  root = OneLineParser(prog=PROG, description=__doc__.split("\n")[0])
  cmds = root.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

  p = cmds.add_parser("annotate", help="an LLM rates each document's educational value")
  _add_input(p)
  p.add_argument("--out", required=True)
  _add_sample(p)
  _add_max_bad(p)
  p.add_argument("--prompt", default=None, help="prompt template file with a {document} placeholder")
  p.add_argument("--scoring", default="additive", help="additive (0-5 from the answer) or logprob (P(yes))")
  p.add_argument("--max_chars", type=int, default=4000, help="characters of each document shown to the LLM")
  p.add_argument("--max_new_tokens", type=int, default=400, help="answer length limit per request")
  p.add_argument("--temperature", type=float, default=0.0)
  llm_lib.add_args(p)

  p = cmds.add_parser("embed", help="document embeddings (float16 .npy shards + ids)")
  _add_input(p)
  p.add_argument("--checkpoint", required=True, help="phi1_jax checkpoint or transformers Phi folder")
  p.add_argument(
    "--tokenizer", default=None, help="tokenizer.model/tokenizer.json or its folder (default: --checkpoint)"
  )
  p.add_argument("--out", required=True)
  p.add_argument("--max_len", type=int, default=512, help="tokens of each document embedded")
  p.add_argument("--pooling", default="mean", help="mean (masked mean of the last hidden states) or last")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--shard_size", type=int, default=4096, help="documents per .npy shard")
  _add_sample(p)
  _add_max_bad(p)

  p = cmds.add_parser("train-classifier", help="random forest (and logistic ablation) on embeddings + labels")
  p.add_argument("--annotations", required=True, help="annotate's OUT folder or its annotations.jsonl")
  p.add_argument("--embeddings", required=True, help="embed's OUT folder")
  p.add_argument("--out", required=True)
  p.add_argument("--threshold", type=float, default=3, help="score >= threshold is 'educational'")
  p.add_argument("--model", default="random_forest", help="random_forest (the paper's) or logistic: the one saved")
  p.add_argument("--test_fraction", type=float, default=0.2)
  p.add_argument("--cut", type=float, default=0.5, help="probability at which a document counts as educational")
  p.add_argument("--trees", type=int, default=200)
  p.add_argument("--seed", type=int, default=0)

  p = cmds.add_parser("filter", help="datatrove: embed + classify -> cut -> MinHash dedup -> JSONL")
  _add_input(p)
  p.add_argument("--classifier", required=True, help="train-classifier's OUT folder")
  p.add_argument("--out", required=True)
  p.add_argument("--tasks", type=int, default=1, help="input shards (fixed for a run: a rerun must use the same)")
  p.add_argument("--workers", type=int, default=None, help="tasks run at once (default: 1 locally, all on SLURM/Ray)")
  p.add_argument("--cut", type=float, default=None, help="probability cut (default: the classifier's)")
  p.add_argument("--batch_size", type=int, default=16, help="embedding batch size")
  p.add_argument("--minhash_ngrams", type=int, default=5)
  p.add_argument("--minhash_buckets", type=int, default=14)
  p.add_argument("--minhash_hashes_per_bucket", type=int, default=8)
  executors.add_args(p, kinds=("local", "slurm", "ray"))
  return root


def main(argv: Sequence[str] | None = None) -> int:
  args = parser().parse_args(argv)
  try:
    if args.command == "annotate":
      from phi1_jax.curate.annotate import annotate

      m = annotate(args)
      if m["annotated"] == 0 and m["failed_this_run"]:  # nothing from before, nothing now: say so in the exit code
        print(
          f"{PROG} annotate: error: none of {m['documents']} documents annotated: all {m['failed_this_run']} "
          f"requests failed (the first reasons are above; {args.out}/manifest.json counts them); "
          "the same command again retries them",
          file=sys.stderr,
        )
        return 1
    elif args.command == "embed":
      from phi1_jax.curate.embeddings import embed_documents

      embed_documents(
        args.input,
        args.checkpoint,
        args.out,
        tokenizer=args.tokenizer,
        max_len=args.max_len,
        pooling=args.pooling,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        sample=args.sample,
        seed=args.seed,
        max_bad_fraction=args.max_bad_fraction,
        text_key=args.text_key,
        id_key=args.id_key,
      )
    elif args.command == "train-classifier":
      from phi1_jax.curate.classifier import train_classifier

      train_classifier(
        args.annotations,
        args.embeddings,
        args.out,
        threshold=args.threshold,
        model=args.model,
        test_fraction=args.test_fraction,
        cut=args.cut,
        seed=args.seed,
        trees=args.trees,
      )
    elif args.command == "filter":
      from phi1_jax.curate.filter import run_filter

      run_filter(
        args.input,
        args.classifier,
        args.out,
        run_on=args,
        tasks=args.tasks,
        workers=args.workers,
        cut=args.cut,
        batch_size=args.batch_size,
        n_grams=args.minhash_ngrams,
        num_buckets=args.minhash_buckets,
        hashes_per_bucket=args.minhash_hashes_per_bucket,
        text_key=args.text_key,
        id_key=args.id_key,
      )
  except UserError as e:
    return report_error(f"{PROG} {args.command}", e)
  except StagesIncomplete as e:
    print(f"{PROG} {args.command}: {e}", file=sys.stderr)
    return 1
  return 0


# What a stopped run leaves for the rerun, per command (cli.run_command's stop line).
KEPT = {
  "annotate": "the annotations written so far are kept",
  "embed": "the finished embedding shards are kept",
  "train-classifier": "no classifier is saved until training ends",
  "filter": "the completed tasks are kept",
}

if __name__ == "__main__":
  from phi1_jax import cli

  sys.exit(cli.run_command(main, kept=KEPT.get(sys.argv[1] if len(sys.argv) > 1 else "", "nothing is lost")))
