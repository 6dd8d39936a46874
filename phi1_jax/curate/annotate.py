"""The `curate annotate` stage: an LLM rates documents' educational value (the paper's question).

Default scoring ("additive"): a chat request with the prompt below (an additive 0-5 scale, as
FineWeb-Edu and Stack-Edu ask it, on the paper's question); the score is the last line
`Educational score: <0-5>` of the answer, null when there is none. `--scoring=logprob` (Ask-LLM,
Sachdeva et al. 2024) asks a yes/no question on the completions endpoint and takes P("yes") from
the first token's top 5 logprobs.

  OUT/annotations.jsonl  {"id", "score", "response", "model", "usage"}, one row per document, written
                         (and flushed) the moment its answer arrives
  OUT/llm_cache.sqlite   every answer received, committed before it is used (phi1_jax.stages.llm)
  OUT/llm_metrics.jsonl  the client's progress rows (rate, ETA, retries, tokens)
  OUT/manifest.json      counts, unparseable count, score histogram, tokens, the client's summary

A rerun (or a resume after SIGKILL) keeps every row already written, asks only for the rest, and
the cache answers any request already paid for; a torn last line is dropped and asked again (from
the cache, so for free). A failed request leaves its document unannotated for the next run.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import re
import sys
from pathlib import Path

from phi1_jax.stages import llm as llm_lib
from phi1_jax.curate import documents
from phi1_jax.cli import UserError
from phi1_jax.curate.common import check_config, write_json_atomic
from phi1_jax.data import sources

FORMAT = "phi1_jax.annotations/v1"
SCORINGS = ("additive", "logprob")
PLACEHOLDER = "{document}"
SCORE_RE = re.compile(r"Educational score:\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)

DEFAULT_PROMPT = """Below is an extract from a code file. Evaluate whether it has high educational value for a \
student whose goal is to learn basic coding concepts, using the additive 5-point scoring system described below. \
Points are accumulated based on the satisfaction of each criterion:

- Add 1 point if the code is valid, working code, even if it is not educational (boilerplate, configuration, \
generated code, data).
- Add another point if the code addresses practical programming concepts, even if it lacks comments.
- Award a third point if the code is suitable for teaching: it introduces key programming concepts, is well \
structured and has some comments or docstrings.
- Give a fourth point if the code is self-contained and highly relevant to teaching programming, like a school \
exercise, a tutorial or a section of a course.
- Grant a fifth point if the code is outstanding in its educational value: clear, step-by-step explanations and \
comments, perfectly suited to teaching basic coding concepts.

The extract:
```
{document}
```

After examining the extract:
- Briefly justify your total score, in up to 100 words.
- Conclude with the score in the format: "Educational score: <total points>"
"""

LOGPROB_PROMPT = """Here is a code file:
```
{document}
```

Does this file have high educational value for a student whose goal is to learn basic coding concepts? \
Answer yes or no.
Answer:"""


def parse_score(text: str) -> int | None:
  """The last `Educational score: N` with N an integer in 0..5, else None."""
  found = SCORE_RE.findall(text)
  if not found:
    return None
  value = float(found[-1])
  return int(value) if value.is_integer() and 0 <= value <= 5 else None


def p_yes(response: dict) -> float | None:
  """P("yes") from the first generated token's top logprobs (OpenAI completions format)."""
  try:
    top = response["choices"][0]["logprobs"]["top_logprobs"][0]
  except (KeyError, IndexError, TypeError):
    return None
  if not isinstance(top, dict):
    return None
  return float(sum(math.exp(lp) for tok, lp in top.items() if tok.strip().lower() == "yes"))


def load_prompt(path) -> str:
  if path is None:
    return DEFAULT_PROMPT
  try:
    text = Path(path).read_text(encoding="utf-8")
  except OSError as e:
    raise UserError(f"--prompt {path}: {e.strerror}") from None
  if PLACEHOLDER not in text:
    raise UserError(f"--prompt {path}: the template has no {PLACEHOLDER} placeholder for the document")
  return text


def read_done(path: Path) -> dict[str, dict]:
  """Rows already written, by id; a torn last line (a killed run) is cut off the file."""
  done: dict[str, dict] = {}
  if not path.is_file():
    return done
  raw = path.read_bytes()
  good = raw.rfind(b"\n") + 1
  if good < len(raw):
    with open(path, "r+b") as fh:
      fh.truncate(good)
  for line in raw[:good].decode("utf-8").splitlines():
    if line.strip():
      row = json.loads(line)
      done[row["id"]] = row
  return done


def _request(doc: dict, args, prompt: str) -> llm_lib.Request:
  text = doc["text"][: args.max_chars]
  content = prompt.replace(PLACEHOLDER, text)
  if args.scoring == "logprob":
    return llm_lib.completion_request(args.model, content, max_tokens=1, temperature=0.0, logprobs=5)
  return llm_lib.chat_request(
    args.model,
    [{"role": "user", "content": content}],
    max_tokens=args.max_new_tokens,
    temperature=args.temperature,
    seed=args.seed,
  )


async def _annotate(docs: list[dict], args, prompt: str, out: Path, client: llm_lib.LLM, done: dict) -> dict:
  todo = [d for d in docs if d["id"] not in done]
  counts = collections.Counter()
  queue = iter(todo)
  stop: list[str] = []
  with open(out / "annotations.jsonl", "a", encoding="utf-8") as sink:

    async def worker():
      for doc in queue:
        if stop:
          return
        try:
          answer = await client.ask(_request(doc, args, prompt))
        except llm_lib.BudgetExhausted as e:
          stop.append(str(e))
          return
        except llm_lib.RequestFailed:  # the client logs the first reasons and counts them all
          counts["failed"] += 1
          continue
        score = p_yes(answer.response) if args.scoring == "logprob" else parse_score(answer.text)
        row = {"id": doc["id"], "score": score, "response": answer.text, "model": args.model, "usage": answer.usage}
        sink.write(json.dumps(row, ensure_ascii=False) + "\n")
        sink.flush()  # written as it comes: a kill loses no row that was answered
        done[doc["id"]] = row
        counts["paid" if not answer.cached else "cached"] += 1

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
  return {"failed_this_run": counts["failed"], "stopped_by_cap": stop[0] if stop else None}


def annotate(args) -> dict:
  """Runs the stage with parsed flags (see __main__); returns the manifest."""
  if args.scoring not in SCORINGS:
    raise UserError(f"--scoring={args.scoring!r} is not one of {SCORINGS}")
  if args.sample is not None and args.sample < 1:
    raise UserError(f"--sample={args.sample} must be positive")
  if args.max_chars < 1 or args.max_new_tokens < 1:
    raise UserError(f"--max_chars={args.max_chars} and --max_new_tokens={args.max_new_tokens} must be positive")
  try:
    llm_lib.check_args(args)
  except llm_lib.LLMError as e:
    raise UserError(str(e)) from None
  prompt = (
    load_prompt(args.prompt) if args.prompt else (DEFAULT_PROMPT if args.scoring == "additive" else LOGPROB_PROMPT)
  )
  if not 0 <= args.max_bad_fraction <= 1:
    raise UserError(f"--max_bad_fraction={args.max_bad_fraction} must be in [0, 1]")
  described = sources.describe_inputs(args.input, args.text_key, args.id_key)
  bad, counted = [], []
  docs = list(documents.sampled_documents(described, args.sample, args.seed, bad, counted))
  documents.check_bad(bad, counted[0], args.max_bad_fraction, log=lambda line: print(line, file=sys.stderr))
  out = Path(args.out)
  config = {
    "format": FORMAT,
    "inputs": sources.fingerprints(described),
    "sample": args.sample,
    "seed": args.seed,
    "model": args.model,
    "scoring": args.scoring,
    "prompt": prompt,
    "max_chars": args.max_chars,
    "max_new_tokens": args.max_new_tokens,
    "temperature": args.temperature,
  }
  check_config(out, config)
  done = read_done(out / "annotations.jsonl")
  print(f"annotate: {len(docs)} documents, {len(done)} already annotated in {out}", flush=True)
  client = llm_lib.from_args(args, out, total=len(docs) - len(done))

  async def run():
    try:
      return await _annotate(docs, args, prompt, out, client, done)
    finally:
      await client.aclose()

  try:
    this_run = asyncio.run(run())
  except llm_lib.EndpointError as e:
    raise UserError(str(e)) from None
  rows = [done[d["id"]] for d in docs if d["id"] in done]
  scores = [r["score"] for r in rows]
  histogram = collections.Counter(str(s) for s in scores if s is not None and args.scoring == "additive")
  manifest = {
    "format": FORMAT,
    "config": {k: v for k, v in config.items() if k != "prompt"},
    "prompt": prompt,
    "inputs": documents.public(described),
    "documents": len(docs),
    "annotated": len(rows),
    "remaining": len(docs) - len(rows),
    "unparseable": sum(s is None for s in scores),
    "bad_input_items": {"count": len(bad), "items": bad[:20]},
    "score_histogram": dict(sorted(histogram.items())),
    "tokens": {
      "prompt": sum(r["usage"].get("prompt_tokens", 0) for r in rows),
      "completion": sum(r["usage"].get("completion_tokens", 0) for r in rows),
    },
    "llm_this_run": client.summary(),
    **this_run,
  }
  write_json_atomic(out / "manifest.json", manifest)
  stopped = f"; stopped by the cap {this_run['stopped_by_cap']}" if this_run["stopped_by_cap"] else ""
  failures = manifest["llm_this_run"]["failures"]  # why, e.g. HTTP 400: a prompt longer than the model's context
  failed = f" ({llm_lib.describe_failures(failures)})" if failures else ""
  print(
    f"{out}: {len(rows)}/{len(docs)} documents annotated, {manifest['unparseable']} unparseable, "
    f"{this_run['failed_this_run']} failed this run{failed}{stopped}; histogram {manifest['score_histogram']}",
    flush=True,
  )
  return manifest
