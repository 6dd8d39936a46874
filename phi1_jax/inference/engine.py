"""Continuous batching for `phi1_jax.serve`: a fixed number of slots share one compiled decode step.

Slots. The KV cache has `max_batch` rows of S columns (S = max_seq_len) per layer, one row per
slot. Decode step t writes every row's newest key/value at column t % S: one scalar index for the
whole batch, so the model's cached forward (`Phi.hidden_states`, as `phi1_jax.sample` uses it)
runs unchanged. A prompt of p tokens that joins before step t has its first p-1 tokens prefilled
into columns t-p+1 .. t-1 (mod S) of its slot's row; its last token is step t's input, so every
new token, the first included, comes from the decode step. Keys are stored with rotary already
applied at their true positions, so where a column sits does not matter: a per-row mask says
which columns hold the row's tokens. A request fits when prompt + max_tokens <= S (checked
before it is queued).

Joining and leaving. Between decode steps the engine thread prefills waiting requests into free
slots (one at a time, right-padded to a power-of-two bucket), and a finished request (eos, a stop
string, max_tokens, or its client gone) frees its slot. Greedy rows take the argmax and sampled
rows draw with their own key (`sample.next_token_rows`), so a request's tokens do not depend on
what else runs in the batch. Steps are pipelined: step t+1 is dispatched before the host reads
step t's tokens, so a sequence that ends at step t has one wasted row in step t+1 (dropped).

No compiles after warm-up: one decode step for the batch, one prefill and one prompt log-prob
program per prompt bucket, all compiled by `warm_up()` (the server answers /health with 200 only
after it). `stats()["traces_after_warmup"]` counts jit traces since then (the tests assert 0).

Shapes in names: B slots, P padded prompt length, S cache columns, V vocab, K top log-probs.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from phi1_jax.inference import sampler as sample

log = logging.getLogger("phi1_jax.serve")
MAX_TOP_LOGPROBS = 5  # top alternatives per token that a request may ask for (OpenAI's limit)


class QueueFull(Exception):
  """More requests wait than --max_queue allows."""


@dataclasses.dataclass
class Params:
  """Per-request generation settings (validated by the HTTP layer)."""

  max_tokens: int = 16
  temperature: float = 0.0  # 0: greedy
  top_p: float = 1.0
  top_k: int = 0  # 0: off
  seed: int = 0
  stop: tuple[str, ...] = ()
  logprobs: int | None = None  # None: no log-probs; k: the chosen token's and k alternatives
  prompt_logprobs: bool = False  # log-probs of the prompt's own tokens (echo)


@dataclasses.dataclass
class Token:
  """One token of the answer (or of the prompt, with echo)."""

  id: int
  logprob: float | None
  top: list[tuple[int, float]] | None  # the K most likely ids with their log-probs


@dataclasses.dataclass
class Delta:
  """What a sequence sends to its client after a step: new text (stop strings held back), the
  tokens behind it, and the finish reason once it is done."""

  text: str
  tokens: list[Token]
  finish_reason: str | None = None


class Sequence:
  """One completion being generated; `emit(Delta)` is called from the engine thread."""

  def __init__(self, prompt: list[int], params: Params, emit: Callable[[Delta], None]):
    self.prompt, self.params, self.emit = prompt, params, emit
    self.tokens: list[int] = []  # generated ids, eos left out
    self.n_generated = 0  # eos included
    self.emitted = 0  # characters of the completion sent so far
    self.cancelled = False
    self.finish_reason: str | None = None
    self.t_submit = time.perf_counter()
    self.t_start: float | None = None  # prefill began (left the queue)
    self.t_done: float | None = None


# ---------------------------------------------------------------- compiled programs


def _prefill(graphdef, params, layers, state, tokens_1xP, length, last, slot, col, seed):
  """Runs a prompt but its last token (`length` tokens, right-padded to P), writes their
  keys/values into row `slot` at columns col-length .. col-1 (mod S) and leaves the last token as
  the row's next input: the decode step at column `col` draws the first new token, as it draws
  every other. Returns the new state and the hidden states (for echo log-probs). slot == B
  changes no row (an echo-only request)."""
  model = nnx.merge(graphdef, params)
  P = tokens_1xP.shape[1]
  S = state["valid"].shape[1]
  causal_1xPxP = jnp.tril(jnp.ones((P, P), bool))[None]  # padding sits after the prompt: causal is enough
  h_1xPxD, cache_1 = model.hidden_states(
    tokens_1xP,
    positions_BxL=jnp.arange(P)[None],
    mask_BxLxS=causal_1xPxP,
    cache=model.init_cache(1, P),
    cache_index=0,
    layers=layers,
  )
  # prompt token j goes to column col - length + j; padding to column S, which the scatter drops
  t_P = jnp.arange(P)
  cols_P = jnp.where(t_P < length, (col - length + t_P) % S, S)
  cache = [
    {name: kv[name].at[slot, :, cols_P].set(new[name][0].transpose(1, 0, 2), mode="drop") for name in ("k", "v")}
    for kv, new in zip(state["cache"], cache_1)
  ]
  valid_S = jnp.zeros((S,), bool).at[cols_P].set(True, mode="drop")
  state = {
    "cache": cache,
    "valid": state["valid"].at[slot].set(valid_S, mode="drop"),
    "tok": state["tok"].at[slot].set(last, mode="drop"),
    "pos": state["pos"].at[slot].set(length, mode="drop"),
    "keys": state["keys"].at[slot].set(jax.random.key(seed), mode="drop"),
  }
  return state, h_1xPxD


def _decode_step(
  graphdef, params, layers, state, col, greedy_B, temperature_B, top_k_B, top_p_B, vocab_limit, want_top
):
  """One token for every slot: each row's newest token goes to column `col`, sees the columns its
  mask holds, and the next token is drawn with the row's own settings and key. Returns the new
  state and (tokens, their log-probs, top K ids and log-probs: computed only when want_top)."""
  model = nnx.merge(graphdef, params)
  S = state["valid"].shape[1]
  at_col_S = jnp.arange(S) == col
  mask_Bx1xS = (state["valid"] | at_col_S[None])[:, None]
  h_Bx1xD, cache = model.hidden_states(
    state["tok"][:, None],
    positions_BxL=state["pos"][:, None],
    mask_BxLxS=mask_Bx1xS,
    cache=state["cache"],
    cache_index=col,
    layers=layers,
  )
  logits_BxV = model.logits(h_Bx1xD)[:, 0]
  keys_Bx2 = jax.vmap(jax.random.split)(state["keys"])
  tok_B = sample.next_token_rows(logits_BxV, keys_Bx2[:, 1], greedy_B, temperature_B, top_k_B, top_p_B, vocab_limit)
  state = {
    "cache": cache,
    "valid": state["valid"] | at_col_S[None],
    "tok": tok_B,
    "pos": state["pos"] + 1,
    "keys": keys_Bx2[:, 0],
  }
  return state, _logprobs(logits_BxV, tok_B, vocab_limit, want_top)


def _logprobs(logits_BxV, tok_B, vocab_limit, want_top=True):
  """(tok_B, its log-prob under the model's full softmax, the top K ids below vocab_limit and
  their log-probs, zeros unless want_top)."""
  logp_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
  chosen_B = jnp.take_along_axis(logp_BxV, tok_B[:, None], axis=1)[:, 0]
  B = logits_BxV.shape[0]
  top_lp_BxK, top_id_BxK = jax.lax.cond(
    want_top,
    lambda: tuple(jax.lax.top_k(sample.mask_vocab(logp_BxV, vocab_limit), MAX_TOP_LOGPROBS)),
    lambda: (jnp.zeros((B, MAX_TOP_LOGPROBS), jnp.float32), jnp.zeros((B, MAX_TOP_LOGPROBS), jnp.int32)),
  )
  return tok_B, chosen_B, top_id_BxK.astype(jnp.int32), top_lp_BxK


def _prompt_logprobs(graphdef, params, h_1xPxD, next_1xP, vocab_limit):
  """For each prefilled position j: log p(next_1xP[j] | tokens up to j) and the top K there."""
  model = nnx.merge(graphdef, params)
  _, chosen_P, top_id_PxK, top_lp_PxK = _logprobs(model.logits(h_1xPxD)[0], next_1xP[0], vocab_limit)
  return chosen_P, top_id_PxK, top_lp_PxK


# ---------------------------------------------------------------- the engine


class Engine:
  """Runs the slots in a background thread; `submit` and `cancel` may be called from any thread."""

  def __init__(self, model, tokenizer, *, max_batch: int, max_queue: int, max_seq_len: int, log_every_s: float = 10.0):
    self.tokenizer, self.max_batch, self.max_queue, self.max_seq_len = tokenizer, max_batch, max_queue, max_seq_len
    self.vocab_limit = np.int32(tokenizer.vocab_size)
    self.eos_id = tokenizer.eos_id
    self.buckets = sample.pow2_buckets(max_seq_len)
    graphdef, params = nnx.split(model)
    # The programs close over the graph definition and take the parameters as a flat list: a call
    # then neither hashes the graph nor walks the nnx State (about 2 ms a step on a CPU).
    self._params, treedef = jax.tree.flatten(params)

    def bind(fn):
      return lambda leaves, *args: fn(graphdef, jax.tree.unflatten(treedef, leaves), *args)

    self._prefill_fn = jax.jit(bind(_prefill), donate_argnums=(2,))
    self._decode_fn = sample.decode_jit(bind(_decode_step), donate_argnums=(2,))
    self._prompt_logprobs_fn = jax.jit(bind(_prompt_logprobs))
    self._layers = model.unstacked_layers()  # per-layer copies, as sample.generate uses them
    B, S = max_batch, max_seq_len
    self._state = {
      "cache": model.init_cache(B, S),
      "valid": jnp.zeros((B, S), bool),
      "tok": jnp.zeros((B,), jnp.int32),
      "pos": jnp.zeros((B,), jnp.int32),
      "keys": jax.random.split(jax.random.key(0), B),
    }
    # per-slot sampling settings live on the host and go with every step (a few bytes)
    self._greedy_B = np.ones((B,), bool)
    self._temperature_B = np.ones((B,), np.float32)
    self._top_k_B = np.zeros((B,), np.int32)
    self._top_p_B = np.ones((B,), np.float32)
    self._slots: list[Sequence | None] = [None] * B
    self._t = 0  # decode steps run; the next step writes column t % S
    self._waiting: collections.deque[Sequence] = collections.deque()
    self._wake = threading.Condition()
    self._stopping = False
    self._thread: threading.Thread | None = None
    self.ready = False
    self.failed = False
    self._traces = 0
    self._traces_at_ready = 0
    self._log_every_s = log_every_s
    self._log_t, self._log_tokens, self.tokens_total = time.perf_counter(), 0, 0
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, *_, **__):
    if event == "/jax/core/compile/jaxpr_trace_duration":
      self._traces += 1

  # ---- control (any thread)

  def start(self) -> None:
    """Warms every shape, then serves, in a daemon thread."""
    self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
    self._thread.start()

  def stop(self) -> None:
    with self._wake:
      self._stopping = True
      self._wake.notify()

  def submit(self, seqs: list[Sequence]) -> None:
    """Queues sequences (all or none); QueueFull when more than max_queue would wait for a slot."""
    with self._wake:
      running = sum(s is not None for s in self._slots)
      if running + len(self._waiting) + len(seqs) > self.max_batch + self.max_queue:
        raise QueueFull(
          f"{running} sequences run and {len(self._waiting)} wait "
          f"(--max_batch={self.max_batch}, --max_queue={self.max_queue})"
        )
      self._waiting.extend(seqs)
      self._wake.notify()

  def cancel(self, seqs: list[Sequence]) -> None:
    """Marks sequences cancelled: a waiting one is dropped, a running one frees its slot before the next step."""
    with self._wake:
      for seq in seqs:
        seq.cancelled = True
        if seq in self._waiting:
          self._waiting.remove(seq)
          seq.t_done = time.perf_counter()
      self._wake.notify()

  def stats(self) -> dict:
    return {
      "running": sum(s is not None for s in self._slots),
      "waiting": len(self._waiting),
      "max_batch": self.max_batch,
      "max_queue": self.max_queue,
      "tokens_generated": self.tokens_total,
      "decode_steps": self._t,
      "traces_after_warmup": self._traces - self._traces_at_ready if self.ready else None,
    }

  # ---- the engine thread

  def _run(self) -> None:
    try:
      self.warm_up()
      pending = None  # the step in flight
      while not self._stopping:
        self._admit()
        step = self._dispatch()
        if pending is not None:
          self._collect(pending)
        pending = step
        if pending is None:
          with self._wake:
            if not self._waiting and not self._stopping:
              self._wake.wait(timeout=self._log_every_s)
        self._maybe_log()
    except Exception:  # noqa: BLE001 -- the server must not hang on a dead engine
      log.exception("engine stopped")
      self.ready, self.failed = False, True
      self._stopping = True
      with self._wake:  # whoever waits gets an answer: finish_reason "error"
        stranded = [seq for seq in self._slots if seq is not None] + list(self._waiting)
        self._waiting.clear()
      for seq in stranded:
        seq.emit(Delta("", [], "error"))

  def warm_up(self) -> None:
    """Compiles the decode step (greedy and sampled rows, with and without top log-probs) and, for
    every prompt bucket, the prefill and the prompt log-probs."""
    start = time.perf_counter()
    S = self.max_seq_len
    for P in self.buckets:
      prompt = [1] * (min(P, S - 1) + 1)  # prefills min(P, S - 1) tokens: bucket P
      self._prefill(Sequence(prompt, Params(max_tokens=0, logprobs=1, prompt_logprobs=True), lambda d: None), None)
    for temperature in (0.0, 1.0):  # the step's greedy-only and sampling branches ...
      for logprobs in (None, 1):  # ... with and without top log-probs
        params = Params(max_tokens=1, temperature=temperature, top_p=0.9, logprobs=logprobs)
        self._prefill(Sequence([1, 2], params, lambda d: None), 0)
        self._collect(self._dispatch())  # max_tokens=1: the sequence ends and frees slot 0
    self._t = self.tokens_total = self._log_tokens = 0
    self._log_t = time.perf_counter()
    self._traces_at_ready = self._traces
    self.ready = True
    log.info(
      "ready: %d slots x %d columns, prompt buckets %s, compiled in %.1fs",
      self.max_batch,
      self.max_seq_len,
      self.buckets,
      time.perf_counter() - start,
    )

  def _admit(self) -> None:
    """Prefills waiting sequences into free slots (echo-only ones need no slot)."""
    while True:
      with self._wake:
        free = [b for b, s in enumerate(self._slots) if s is None]
        if not self._waiting or (not free and self._waiting[0].params.max_tokens > 0):
          return
        seq = self._waiting.popleft()
      if seq.params.max_tokens == 0:  # the prompt's log-probs only
        self._prefill(seq, slot=None)
      else:
        self._prefill(seq, slot=free[0])

  def _prefill(self, seq: Sequence, slot: int | None) -> None:
    """Prefills seq into `slot` (its first token comes with the next step), or with slot None
    (max_tokens == 0) only computes the prompt's log-probs."""
    seq.t_start = time.perf_counter()
    p, prm = len(seq.prompt), seq.params
    n = p - 1  # the prompt's last token is the next step's input
    P = next(b for b in self.buckets if b >= max(n, 1))
    tokens_1xP = np.zeros((1, P), np.int32)
    tokens_1xP[0, :n] = seq.prompt[:-1]
    self._state, h_1xPxD = self._prefill_fn(
      self._params,
      self._layers,
      self._state,
      tokens_1xP,
      np.int32(n),
      np.int32(seq.prompt[-1]),
      np.int32(self.max_batch if slot is None else slot),
      np.int32(self._t % self.max_seq_len),
      np.uint32(prm.seed % 2**32),
    )
    echo: list[Token] = []
    if prm.prompt_logprobs:
      next_1xP = np.zeros((1, P), np.int32)
      next_1xP[0, :n] = seq.prompt[1:]
      chosen_P, top_id_PxK, top_lp_PxK = jax.device_get(
        self._prompt_logprobs_fn(self._params, h_1xPxD, next_1xP, self.vocab_limit)
      )
      k = prm.logprobs or 0
      echo = [Token(seq.prompt[0], None, None)] + [
        Token(seq.prompt[j + 1], float(chosen_P[j]), self._top(top_id_PxK[j, :k], top_lp_PxK[j, :k])) for j in range(n)
      ]
    if slot is None:  # echo only: no slot, nothing generated
      seq.finish_reason, seq.t_done = "length", time.perf_counter()
      seq.emit(Delta("", echo, "length"))
      return
    self._greedy_B[slot] = prm.temperature == 0
    self._temperature_B[slot] = max(prm.temperature, 1e-6)
    self._top_k_B[slot], self._top_p_B[slot] = prm.top_k, prm.top_p
    self._slots[slot] = seq
    if echo:
      seq.emit(Delta("", echo))

  def _dispatch(self):
    """Frees cancelled slots and starts one decode step for the others; returns what `_collect`
    needs (the step runs while the host handles the step before it)."""
    for b, seq in enumerate(self._slots):
      if seq is not None and seq.cancelled:  # its client is gone: nobody to tell
        self._free(b)
        seq.t_done = time.perf_counter()
    if not any(s is not None for s in self._slots):
      return None
    col = np.int32(self._t % self.max_seq_len)
    want_top = np.bool_(any(s is not None and s.params.logprobs for s in self._slots))
    self._state, picked = self._decode_fn(
      self._params,
      self._layers,
      self._state,
      col,
      self._greedy_B.copy(),
      self._temperature_B.copy(),
      self._top_k_B.copy(),
      self._top_p_B.copy(),
      self.vocab_limit,
      want_top,
    )
    self._t += 1
    return picked, list(self._slots)

  def _collect(self, step) -> None:
    """Hands a finished step's tokens to the sequences that held the slots when it started, if
    they still do (a sequence that ended since, by its token of the step before, gets none)."""
    picked, owners = step
    tok_B, lp_B, top_id_BxK, top_lp_BxK = jax.device_get(picked)
    for b, seq in enumerate(owners):
      if seq is not None and self._slots[b] is seq:
        self._accept(b, int(tok_B[b]), float(lp_B[b]), top_id_BxK[b], top_lp_BxK[b])

  def _accept(self, slot: int, tok: int, lp: float, top_id_K, top_lp_K) -> None:
    """Takes slot's new token: sends the text it completes; frees the slot when the sequence ends."""
    seq = self._slots[slot]
    seq.n_generated += 1
    self.tokens_total += 1
    self._log_tokens += 1
    if tok == self.eos_id:
      return self._end(slot, self._flush(seq, []), "stop")
    seq.tokens.append(tok)
    k = seq.params.logprobs
    token = [Token(tok, lp, self._top(top_id_K[:k], top_lp_K[:k]) if k else None)] if k is not None else []
    text = self.tokenizer.decode(seq.tokens)
    cut = _find_stop(text, seq.params.stop)
    if cut is not None:
      return self._end(slot, self._flush(seq, token, text[:cut]), "stop")
    if seq.n_generated >= seq.params.max_tokens:
      return self._end(slot, self._flush(seq, token, text), "length")
    safe = len(text) - _held_back(text, seq.params.stop)
    delta = text[seq.emitted : safe] if safe > seq.emitted else ""
    seq.emitted = max(seq.emitted, safe)
    if delta or token:
      seq.emit(Delta(delta, token))

  def _flush(self, seq: Sequence, token: list[Token], text: str | None = None) -> Delta:
    text = self.tokenizer.decode(seq.tokens) if text is None else text
    delta = text[seq.emitted :]
    seq.emitted = len(text)
    return Delta(delta, token)

  def _end(self, slot: int, delta: Delta, reason: str) -> None:
    seq = self._slots[slot]
    self._free(slot)
    delta.finish_reason = seq.finish_reason = reason
    seq.t_done = time.perf_counter()
    seq.emit(delta)

  def _free(self, slot: int) -> None:
    self._slots[slot] = None
    self._greedy_B[slot] = True  # an empty slot decodes greedily (no sort), its tokens unread

  @staticmethod
  def _top(ids_K, lps_K) -> list[tuple[int, float]]:
    return [(int(i), float(v)) for i, v in zip(ids_K, lps_K)]

  def _maybe_log(self) -> None:
    now = time.perf_counter()
    if now - self._log_t < self._log_every_s:
      return
    stats = self.stats()
    if stats["running"] or stats["waiting"] or self._log_tokens:
      log.info(
        "slots %d/%d running, %d waiting, %.1f tokens/s",
        stats["running"],
        self.max_batch,
        stats["waiting"],
        self._log_tokens / (now - self._log_t),
      )
    self._log_t, self._log_tokens = now, 0


def _find_stop(text: str, stops) -> int | None:
  """Where the first stop string starts in text, or None."""
  found = [j for j in (text.find(s) for s in stops if s) if j >= 0]
  return min(found) if found else None


def _held_back(text: str, stops) -> int:
  """How many trailing characters to hold back while streaming: the longest text tail that could
  still grow into a stop string, and an unfinished UTF-8 character (decoded as U+FFFD)."""
  hold = max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
  unfinished = len(text) - len(text.rstrip("\ufffd"))
  return max(hold, unfinished)
