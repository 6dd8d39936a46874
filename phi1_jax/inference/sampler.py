"""Batched autoregressive sampling with the KV cache.

One jitted prefill runs the whole left-padded prompt batch; a jitted decode chunk then runs a
`jax.lax.while_loop` of single-token steps. The loop stops a row at eos (or when the host
marked it stopped) and the whole batch when every row is done or the chunk's step budget ends.

Stop strings are checked on the host between chunks: `generate` runs the decode loop in chunks
of `check_every` tokens, decodes each unfinished row and marks it done when `stop_fn` says so.
A token-level check inside the loop would have to know every token sequence that decodes to
"\\ndef" (BPE merges make that open-ended); a host check every K steps costs one small transfer
per chunk and saves the hundreds of tokens a model writes after its function ends.

Shapes are bucketed (prompt length and cache length to multiples of `bucket`) so a benchmark run
compiles once per bucket, not once per prompt. The cache and the loop state stay on device
between chunks (donated, so no copies).

The loop reads `Phi.unstacked_layers()`, a per-layer copy of the layer weights in the compute
dtype made once per `generate` call (slicing the stacked weights inside the loop would copy them
on every token). It costs memory: one more copy of the layers (half of it for a bfloat16 model).

Shapes in names: B batch, P padded prompt length, S cache length, M max new tokens, V vocab.

Command (one prompt, printed completions):

  python -m phi1_jax.sample --checkpoint=CKPT --prompt='def fib(n):' [--max_tokens=128]
      [--temperature=0 --top_p=1 --top_k=0 --seed=0 --n=1 --stop=STR ... --tokenizer=PATH]

CKPT is anything `phi1_jax.model.checkpoint.resolve` takes; the tokenizer is the one kept with it
unless --tokenizer names one. `--prompt=-` reads the prompt from stdin.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


PAD_OUT = -1  # marks "no token" in the output buffer (after eos or a host stop)


def pow2_buckets(max_len: int, smallest: int = 16) -> list[int]:
  """Padded lengths for jit shapes: powers of two from `smallest`, then max_len itself."""
  out, n = [], smallest
  while n < max_len:
    out.append(n)
    n *= 2
  return out + [max_len]


def _round_up(n: int, m: int) -> int:
  return max(m, -(-n // m) * m)


def _next_token(logits_BxV, key, temperature, top_k, top_p, vocab_limit, *, greedy: bool, filtered: bool):
  """Greedy, or a draw from the temperature/top-k/top-p filtered logits; ids >= vocab_limit never.

  Only the switches are static (they change the program); temperature, top_k (0: off), top_p
  and vocab_limit are traced, so changing them does not recompile. vocab_limit exists because
  the embedding is padded past the tokenizer (phi-1: 51200 rows, 50295 tokens) and a padding
  id cannot be decoded.
  """
  logits_BxV = mask_vocab(logits_BxV, vocab_limit)
  if greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV / temperature
  if filtered:
    logits_BxV = top_k_top_p(logits_BxV, top_k, top_p)
  return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


def next_token_rows(logits_BxV, keys_B, greedy_B, temperature_B, top_k_B, top_p_B, vocab_limit):
  """`_next_token` with settings per row (the server's slots): greedy rows take the argmax, the
  others draw with their own key, temperature, top-k (0: off) and top-p. Everything is traced;
  the filtering (a sort of the vocabulary) runs only when some row samples."""
  logits_BxV = mask_vocab(logits_BxV, vocab_limit)
  greedy_tok_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)

  def draw():
    scaled_BxV = top_k_top_p(logits_BxV / temperature_B[:, None], top_k_B[:, None], top_p_B[:, None])
    return jax.vmap(jax.random.categorical)(keys_B, scaled_BxV).astype(jnp.int32)

  drawn_B = jax.lax.cond(jnp.all(greedy_B), lambda: greedy_tok_B, draw)
  return jnp.where(greedy_B, greedy_tok_B, drawn_B)


def mask_vocab(logits_BxV, vocab_limit):
  """float32 logits with ids >= vocab_limit (embedding padding past the tokenizer) at -inf."""
  logits_BxV = logits_BxV.astype(jnp.float32)
  return jnp.where(jnp.arange(logits_BxV.shape[-1]) < vocab_limit, logits_BxV, jnp.finfo(jnp.float32).min)


def top_k_top_p(logits_BxV, top_k, top_p):
  """Top-k (0: off), then top-p on what top-k kept (as transformers orders them); the others at
  -inf. top_k and top_p are scalars or [B, 1] (one per row); top_p >= 1 keeps every token."""
  neg_inf = jnp.finfo(jnp.float32).min
  B = logits_BxV.shape[0]
  sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  kth_Bx1 = jnp.take_along_axis(sorted_BxV, jnp.broadcast_to(jnp.maximum(top_k, 1) - 1, (B, 1)), axis=1)
  in_k_BxV = (top_k <= 0) | (sorted_BxV >= kth_Bx1)
  probs_BxV = jax.nn.softmax(jnp.where(in_k_BxV, sorted_BxV, neg_inf), axis=-1)
  # keep a token while the mass before it is under top_p: the top token is always kept
  keep_BxV = in_k_BxV & ((top_p >= 1.0) | ((jnp.cumsum(probs_BxV, axis=-1) - probs_BxV) < top_p))
  thresh_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_BxV < thresh_Bx1, neg_inf, logits_BxV)


# XLA:CPU sends each dot to YNNPACK by default, which is slow for the few rows of a decode step
# (batch x 1 token); its Eigen dots run the benchmark's decode about 1.4x faster. The option is
# set per function, so it touches nothing else in the process, and only on CPU.
_CPU_DECODE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _decode_options(backend: str) -> dict | None:
  if backend != "cpu":
    return None
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU_DECODE_OPTIONS).lower(1.0).compile()
  except Exception:  # noqa: BLE001 -- an older XLA has no YNNPACK, so neither the option nor its cost
    return None
  return _CPU_DECODE_OPTIONS


def decode_jit(fn, **kwargs):
  """jax.jit with the CPU decode options when the default backend is the CPU."""
  cache = {}

  @functools.wraps(fn)
  def call(*args, **kw):
    backend = jax.default_backend()
    if backend not in cache:
      cache[backend] = jax.jit(fn, compiler_options=_decode_options(backend), **kwargs)
    return cache[backend](*args, **kw)

  return call


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new", "cache_len", "sampling"))
def _prefill(
  graphdef, params, layers, tokens_BxP, lengths_B, limits_B, key, sampling_args, *, max_new, cache_len, sampling
):
  """Runs the prompts through the model once; returns the decode-loop state with token 0 drawn."""
  model = nnx.merge(graphdef, params)
  B, P = tokens_BxP.shape
  S = cache_len
  pad_B = P - lengths_B
  slot_S = jnp.arange(S)
  # prompt slots that hold real tokens: [pad_B, P)
  prompt_valid_BxS = (slot_S[None] >= pad_B[:, None]) & (slot_S[None] < P)
  positions_BxP = jnp.maximum(jnp.arange(P)[None] - pad_B[:, None], 0)
  t_P = jnp.arange(P)
  causal_PxS = slot_S[None, :] <= t_P[:, None]
  # padding queries see only themselves, so no softmax row is empty; their outputs are unused
  mask_BxPxS = (causal_PxS[None] & prompt_valid_BxS[:, None]) | (slot_S[None, None] == t_P[None, :, None])
  cache = model.init_cache(B, S)
  h_BxPxD, cache = model.hidden_states(
    tokens_BxP, positions_BxL=positions_BxP, mask_BxLxS=mask_BxPxS, cache=cache, cache_index=0, layers=layers
  )
  logits_BxV = model.logits(h_BxPxD[:, -1:])[:, 0]
  key, sub = jax.random.split(key)
  tok_B = _next_token(logits_BxV, sub, *sampling_args, **dict(sampling))
  out_BxM = jnp.full((B, max_new), PAD_OUT, jnp.int32).at[:, 0].set(tok_B)
  return {
    "i": jnp.int32(0),
    "tok": tok_B,
    "done": jnp.zeros((B,), bool),
    "out": out_BxM,
    "cache": cache,
    "key": key,
    "lengths": lengths_B,
    "limits": limits_B,
    "prompt_valid": prompt_valid_BxS,
    "sampling_args": sampling_args,
  }


@functools.partial(decode_jit, static_argnames=("graphdef", "prompt_len", "sampling"), donate_argnames=("state",))
def _decode(graphdef, params, layers, state, done_B, step_end, eos_id, *, prompt_len, sampling):
  """Decodes until every row is done or out[:, step_end] is written (one compiled while_loop).

  state["tok"] is out[:, i], the newest token; done_B (host stops) is OR-ed into state["done"]. A row
  is finished at eos or once it holds its limit of new tokens (state["limits"]).
  """
  model = nnx.merge(graphdef, params)
  P = prompt_len
  B, S = state["prompt_valid"].shape
  slot_S = jnp.arange(S)

  def finished(st):
    return st["done"] | (st["tok"] == eos_id) | (st["i"] + 1 >= st["limits"])

  def cond(st):
    return (st["i"] < step_end) & ~jnp.all(finished(st))

  def body(st):
    i, done_B = st["i"], finished(st)
    # the newest token goes to slot P + i at position length + i; it sees the real prompt
    # slots and the generated slots up to itself
    mask_Bx1xS = (st["prompt_valid"] | ((slot_S >= P) & (slot_S <= P + i))[None])[:, None]
    h_Bx1xD, cache = model.hidden_states(
      st["tok"][:, None],
      positions_BxL=(st["lengths"] + i)[:, None],
      mask_BxLxS=mask_Bx1xS,
      cache=st["cache"],
      cache_index=P + i,
      layers=layers,
    )
    key, sub = (st["key"], None) if dict(sampling)["greedy"] else jax.random.split(st["key"])  # greedy draws nothing
    tok_B = _next_token(model.logits(h_Bx1xD)[:, 0], sub, *st["sampling_args"], **dict(sampling))
    tok_B = jnp.where(done_B, PAD_OUT, tok_B)
    out = jax.lax.dynamic_update_slice_in_dim(st["out"], tok_B[:, None], i + 1, axis=1)
    return {**st, "i": i + 1, "tok": tok_B, "done": done_B, "out": out, "cache": cache, "key": key}

  state = {**state, "done": state["done"] | done_B}
  return jax.lax.while_loop(cond, body, state)


def generate(
  model,
  prompt_tokens: Sequence[Sequence[int]],
  *,
  max_new_tokens: int | Sequence[int],
  temperature: float = 0.0,
  top_p: float = 1.0,
  top_k: int = 0,
  eos_id: int | None = None,
  seed: int = 0,
  vocab_limit: int | None = None,
  stop_fn: Callable[[list[int]], bool] | None = None,
  check_every: int = 32,
  bucket: int = 16,
) -> list[list[int]]:
  """New tokens for each prompt (eos and anything after it left out).

  max_new_tokens is one limit for every row or one per row (e.g. the room each prompt leaves in
  the model's context). Greedy when temperature is 0. Prompts may differ in length (left-padded, masked). Ids at or
  past vocab_limit (default: the model's vocab size) are never drawn. With
  stop_fn, every `check_every` tokens each unfinished row's new tokens are passed to it and
  the row stops when it returns True (the row may then hold up to check_every extra tokens;
  cut them on the host, as `sample_texts` does).
  """
  if not prompt_tokens or any(len(p) == 0 for p in prompt_tokens):
    raise ValueError("generate: every prompt needs at least one token")
  limits = [max_new_tokens] * len(prompt_tokens) if isinstance(max_new_tokens, int) else list(max_new_tokens)
  if len(limits) != len(prompt_tokens) or min(limits) < 1:
    raise ValueError(f"generate: max_new_tokens={max_new_tokens} must be >= 1 (one for each prompt if a list)")
  if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
    raise ValueError(f"generate: bad sampling settings temperature={temperature} top_p={top_p} top_k={top_k}")
  B, M = len(prompt_tokens), max(limits)
  limits_B = np.array(limits, np.int32)
  P = _round_up(max(len(p) for p in prompt_tokens), bucket)
  S = _round_up(P + M, bucket)
  tokens_BxP = np.zeros((B, P), np.int32)
  for b, p in enumerate(prompt_tokens):
    tokens_BxP[b, P - len(p) :] = p
  lengths_B = np.array([len(p) for p in prompt_tokens], np.int32)
  sampling = (("greedy", temperature == 0), ("filtered", top_k > 0 or top_p < 1.0))
  sampling_args = (
    jnp.float32(max(temperature, 1e-6)),
    jnp.int32(top_k),
    jnp.float32(top_p),
    jnp.int32(model.cfg.vocab_size if vocab_limit is None else vocab_limit),
  )
  graphdef, params = nnx.split(model)
  layers = model.unstacked_layers()  # a copy of the layer weights, so the decode step slices nothing

  state = _prefill(
    graphdef,
    params,
    layers,
    jnp.asarray(tokens_BxP),
    jnp.asarray(lengths_B),
    jnp.asarray(limits_B),
    jax.random.key(seed),
    sampling_args,
    max_new=M,
    cache_len=S,
    sampling=sampling,
  )
  host_done_B = np.zeros((B,), bool)
  chunk = M if stop_fn is None else max(1, check_every)
  step_end = 0
  while True:
    step_end = min(step_end + chunk, M - 1)
    state = _decode(
      graphdef,
      params,
      layers,
      state,
      jnp.asarray(host_done_B),
      jnp.int32(step_end),
      jnp.int32(-2 if eos_id is None else eos_id),  # -2 matches no token
      prompt_len=P,
      sampling=sampling,
    )
    out_BxM, i, done_B, tok_B = jax.device_get((state["out"], state["i"], state["done"], state["tok"]))
    done_B = done_B | (tok_B == PAD_OUT) | (eos_id is not None and tok_B == eos_id) | (int(i) + 1 >= limits_B)
    rows = [_cut(out_BxM[b, : int(i) + 1], eos_id) for b in range(B)]
    if stop_fn is not None:
      for b in range(B):
        if not done_B[b] and not host_done_B[b] and stop_fn(rows[b]):
          host_done_B[b] = True
    if int(i) >= M - 1 or np.all(done_B | host_done_B):
      return rows


def _cut(row, eos_id) -> list[int]:
  """Tokens before the first eos or PAD_OUT."""
  row = [int(t) for t in row]
  for j, t in enumerate(row):
    if t == PAD_OUT or (eos_id is not None and t == eos_id):
      return row[:j]
  return row


def truncate_at(text: str, stop_sequences: Sequence[str]) -> str:
  """text up to the first occurrence of any stop sequence."""
  cut = min((j for j in (text.find(s) for s in stop_sequences if s) if j >= 0), default=len(text))
  return text[:cut]


def sample_texts(
  model,
  tokenizer,
  prompts: Sequence[str],
  *,
  stop_sequences: Sequence[str] = (),
  batch_size: int = 16,
  max_new_tokens: int | Sequence[int] = 384,
  temperature: float = 0.0,
  top_p: float = 1.0,
  top_k: int = 0,
  seed: int = 0,
  check_every: int = 32,
  progress: Callable[[int], None] | None = None,
  done: dict[int, str] | None = None,
  on_batch: Callable[[dict[int, str]], None] | None = None,
) -> list[str]:
  """Completions of `prompts` (in their order), each cut at its first stop sequence.

  max_new_tokens is one limit or one per prompt. Prompts are sorted by token length so batches
  pad little; the last batch is filled up to batch_size with copies so every batch has the same
  shape (no recompiles). Batch j draws with seed + j. progress(n) is called after each batch with
  the number of real prompts done. To resume, `done` maps prompt index -> completion from an
  earlier call with the same arguments: a batch whose prompts are all there is not sampled again
  (the batches and their seeds are the same). on_batch({prompt index: completion}) is called
  after each batch sampled here.
  """
  encoded = [list(t) for t in tokenizer.encode_batch(list(prompts))]
  limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
  order = sorted(range(len(prompts)), key=lambda j: -len(encoded[j]))
  eos_id = getattr(tokenizer, "eos_id", None)
  stop_fn = None
  if stop_sequences:
    stop_fn = lambda toks: any(s in tokenizer.decode(toks) for s in stop_sequences)
  done = done or {}
  results: list[str] = [""] * len(prompts)
  for batch_no, start in enumerate(range(0, len(order), batch_size)):
    idx = order[start : start + batch_size]
    if all(j in done for j in idx):
      for j in idx:
        results[j] = done[j]
    else:
      idx_padded = idx + [idx[-1]] * (batch_size - len(idx))
      new = generate(
        model,
        [encoded[j] for j in idx_padded],
        max_new_tokens=[limits[j] for j in idx_padded],
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        eos_id=eos_id,
        seed=seed + batch_no,
        vocab_limit=tokenizer.vocab_size,
        stop_fn=stop_fn,
        check_every=check_every,
      )
      for j, toks in zip(idx, new):
        results[j] = truncate_at(tokenizer.decode(toks), stop_sequences)
      if on_batch is not None:
        on_batch({j: results[j] for j in idx})
    if progress is not None:
      progress(len(idx))
  return results
