"""The synthesis pipeline step: prompts -> LLM -> validation -> near-duplicate check -> documents.

`Synthesize` is a datatrove PipelineStep that yields datatrove Documents; the command puts it in
front of a `JsonlWriter` and runs it with a datatrove executor. Task `rank` of `world` owns the
prompt indices i = rank, rank + world, ... and writes its share of `--n` documents: the first ones,
in index order, that pass validation and are not near duplicates of one kept before (the output
does not depend on answer timing). Requests go through `phi1_jax.stages.llm`, whose SQLite cache makes a
rerun after any kill replay the paid answers for free. Each task writes its counts to
`OUT/.synth/tasks/RANK.json` for the manifest.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from phi1_jax.stages import llm as llm_lib
from phi1_jax.synth import dedup, prompts, validate

SOURCES = {"textbooks": "synthetic_textbook", "exercises": "synthetic_exercise"}


def task_share(n: int, rank: int, world: int) -> int:
  return n // world + (rank < n % world)


def write_json_atomic(path: Path, obj) -> None:
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


def jsonl_adapter(writer, document: Document) -> dict:
  """datatrove Document -> the project's {"id", "text", "source", "meta"} row."""
  return {
    "id": document.id,
    "text": document.text,
    "source": document.metadata["source"],
    "meta": document.metadata["meta"],
  }


@dataclasses.dataclass
class _Outcome:
  index: int
  choice: dict
  answer: llm_lib.Answer | None = None
  text: str | None = None
  reason: str | None = None  # why it is not kept; None: a candidate document
  exercise: dict | None = None
  budget: bool = False
  executed: bool = False  # ran its tests in the sandbox


def endpoint_error_path(out_dir) -> Path:
  """Where a task leaves the endpoint's refusal for the command to report."""
  return Path(out_dir) / ".synth" / "endpoint_error.txt"


class Synthesize(PipelineStep):
  name = "synthesize"
  type = "📝 - SYNTH"

  def __init__(
    self,
    kind: str,
    n: int,
    out_dir: str,
    *,
    seed: int,
    topics_path: str,
    template_path: str | None,
    model: str,
    endpoint: str,
    sampling: dict,
    llm_options: dict,
    min_chars: int,
    max_prompts: int,
    exec_timeout_s: float,
    output_pattern: str,
    exec_sandbox: str = "bwrap",
  ):
    super().__init__()
    self.output_pattern = output_pattern  # the writer's file for a rank: "OUT/textbooks-{rank:05d}.jsonl"
    self.kind, self.n, self.out_dir, self.seed = kind, n, out_dir, seed
    self.topics_path, self.template_path, self.model, self.endpoint, self.sampling = (
      topics_path,
      template_path,
      model,
      endpoint,
      sampling,
    )
    self.llm_options, self.min_chars, self.max_prompts = llm_options, min_chars, max_prompts
    self.exec_timeout_s, self.exec_sandbox = exec_timeout_s, exec_sandbox

  # ------------------------------------------------------------ datatrove entry

  def run(self, data, rank: int = 0, world_size: int = 1):
    """Yields this task's documents while driving its asyncio loop one document at a time."""
    # A killed earlier try may have left part of this task's file: the writer starts it afresh.
    Path(self.output_pattern.format(rank=rank)).unlink(missing_ok=True)
    loop = asyncio.new_event_loop()
    stats = {
      "rank": rank,
      "target": task_share(self.n, rank, world_size),
      "kept": 0,
      "prompts": 0,
      "rejected": collections.Counter(),
      "executed": 0,
      "passed_tests": 0,
      "unused_answers": 0,
      "stopped_by": None,
    }
    documents = self._documents(rank, world_size, stats)
    try:
      while True:
        try:
          document = loop.run_until_complete(documents.__anext__())
        except StopAsyncIteration:
          break
        self.stat_update("documents_kept")
        yield document
    except llm_lib.EndpointError as error:
      # The endpoint refuses everything (a bad key, URL or model) or failed every request for --give_up_after
      # seconds: the task stops here and the command says why in one line (raised, datatrove would log it
      # with a traceback first).
      stats["stopped_by"] = "endpoint"
      endpoint_error_path(self.out_dir).parent.mkdir(parents=True, exist_ok=True)
      endpoint_error_path(self.out_dir).write_text(str(error))
    except (KeyboardInterrupt, GeneratorExit):
      # Stopped (SIGINT/SIGTERM, or the writer gave up): the loop may have been cut mid-step, and closing
      # the generator would raise ("already running") or wait out retries; the cache holds every answer.
      loop = None
      raise
    finally:
      if loop is not None:
        loop.run_until_complete(documents.aclose())
        loop.close()
    stats["complete"] = stats["kept"] == stats["target"]
    stats["rejected"] = dict(stats["rejected"])
    tasks_dir = Path(self.out_dir) / ".synth" / "tasks"
    tasks_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(tasks_dir / f"{rank:05d}.json", stats)

  # ------------------------------------------------------------ generation

  def _request(self, i: int, prompt: str) -> llm_lib.Request:
    params = {**self.sampling, "seed": prompts.request_seed(self.seed, i)}
    if self.endpoint == "chat":
      return llm_lib.chat_request(self.model, [{"role": "user", "content": prompt}], **params)
    return llm_lib.completion_request(self.model, prompt, **params)

  async def _attempt(self, client: llm_lib.LLM, i: int, choice: dict) -> _Outcome:
    outcome = _Outcome(i, choice)
    try:
      outcome.answer = await client.ask(self._request(i, choice["prompt"]))
    except llm_lib.BudgetExhausted:
      outcome.budget = True
      return outcome
    except llm_lib.RequestFailed:
      outcome.reason = "request_failed"
      return outcome
    text = outcome.answer.text
    finish_reason = outcome.answer.response["choices"][0].get("finish_reason")
    if self.kind == "textbooks":
      outcome.reason = validate.textbook_rejection(text, finish_reason, self.min_chars)
      outcome.text = text.strip() + "\n"
      return outcome
    if finish_reason == "length":
      outcome.reason = "truncated"
      return outcome
    exercise, outcome.reason = validate.parse_exercise(text, choice["function_name"])
    if exercise is not None:
      outcome.exercise = exercise
      outcome.text = exercise["prompt"] + exercise["solution"]
      (outcome.reason,) = await asyncio.to_thread(
        validate.check_exercises, [exercise], self.exec_timeout_s, sandbox=self.exec_sandbox
      )
      outcome.executed = True
    return outcome

  def _document(self, outcome: _Outcome) -> Document:
    choice = {k: v for k, v in outcome.choice.items() if k != "prompt"}
    meta = {
      **choice,
      "prompt_index": outcome.index,
      "seed": self.seed,
      "prompt_sha256": hashlib.sha256(outcome.choice["prompt"].encode()).hexdigest(),
      "request_key": outcome.answer.key,
      "model": self.model,
      "usage": outcome.answer.usage,
    }
    if outcome.exercise is not None:
      meta.update(
        prompt_chars=len(outcome.exercise["prompt"]),
        tests=outcome.exercise["tests"],
        entry_point=outcome.exercise["entry_point"],
      )
    doc_id = f"{SOURCES[self.kind]}/{self.seed}/{outcome.index:09d}"
    return Document(text=outcome.text, id=doc_id, metadata={"source": SOURCES[self.kind], "meta": meta})

  async def _documents(self, rank: int, world: int, stats: dict):
    topics = prompts.load_topics(self.topics_path)
    parts = prompts.load_parts()
    prompter = prompts.PROMPTERS[self.kind]
    template = prompts.load_template(self.template_path, self.kind) if self.template_path else None
    target = stats["target"]
    options = dict(self.llm_options)
    for cap in ("max_requests", "max_tokens_total"):  # a task's share of a cap
      if options.get(cap) is not None:
        options[cap] = task_share(options[cap], rank, world)
    # no total: rejected answers make the number of requests open. Its lines go to stdout, with
    # synth's own: stderr is datatrove's log file while the pipeline runs.
    client = llm_lib.LLM(**options, log=lambda line: print(line, flush=True))
    index = dedup.NearDuplicateIndex(dedup.MinHasher(work_dir=str(Path(self.out_dir) / ".synth" / "minhash")))
    max_prompts = task_share(self.max_prompts, rank, world)
    pending: collections.deque[asyncio.Task] = collections.deque()
    next_index, started = rank, time.monotonic()
    last_line = started
    try:
      while stats["kept"] < target:
        # Keep no more in flight than documents still missing: no answer is bought in vain.
        while (
          stats["stopped_by"] is None
          and len(pending) < min(client.concurrency, target - stats["kept"])
          and stats["prompts"] < max_prompts
        ):
          choice = prompter(self.seed, next_index, topics, parts, template)
          pending.append(asyncio.ensure_future(self._attempt(client, next_index, choice)))
          next_index += world
          stats["prompts"] += 1
        if not pending:
          if stats["stopped_by"] is None:
            stats["stopped_by"] = f"--max_prompts={self.max_prompts}"
            print(
              f"synth: task {rank}: {stats['prompts']} prompts used (--max_prompts={self.max_prompts}) "
              f"with {stats['kept']} of {target} documents kept; rejections: {dict(stats['rejected'])}",
              file=sys.stderr,
              flush=True,
            )
          break
        outcome = await pending.popleft()
        if outcome.budget:
          stats["stopped_by"] = client.exhausted
          continue
        if outcome.executed:
          stats["executed"] += 1
          stats["passed_tests"] += outcome.reason is None
        reason = outcome.reason
        if reason is None and index.duplicate_of(outcome.text) is not None:
          reason = "near_duplicate"
        if reason is not None:
          stats["rejected"][reason] += 1
          continue
        document = self._document(outcome)
        index.add(document.id, document.text)
        stats["kept"] += 1
        now = time.monotonic()
        if now - last_line > 10 or stats["kept"] == target:
          last_line, rate = now, stats["kept"] / max(now - started, 1e-9)
          print(
            f"synth: task {rank}: {stats['kept']}/{target} kept, {rate:.2f}/s, "
            f"ETA {(target - stats['kept']) / rate:.0f}s, {stats['prompts']} prompts, "
            f"rejected {dict(stats['rejected'])}",
            file=sys.stderr,
            flush=True,
          )
        yield document
    finally:
      # Answers still on their way are paid for: let them land in the cache.
      for outcome in await asyncio.gather(*pending, return_exceptions=True):
        stats["unused_answers"] += isinstance(outcome, _Outcome) and outcome.answer is not None
      stats["llm"] = client.summary()
      await client.aclose()
