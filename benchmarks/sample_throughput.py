"""Greedy decoding throughput: phi1_jax.inference.sampler.generate against transformers' generate.

Both run the same PhiForCausalLM weights (random, converted with phi1_jax.model.hf.hf_to_params)
on the same left-padded prompts of different lengths, greedy, exactly --new_tokens new tokens
each (no eos), KV cache on both sides. Warm-up (compilation, first-call allocation) is excluded;
each side's time is the best of --repeats runs,
interleaved so that load from other processes hits both sides alike. Prints tokens per second of both and the ratio.

  PYTHONPATH=. python benchmarks/sample_throughput.py [--d_model=512 --n_layers=8 ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--vocab_size", type=int, default=51200)
  ap.add_argument("--d_model", type=int, default=512)
  ap.add_argument("--n_layers", type=int, default=8)
  ap.add_argument("--n_heads", type=int, default=8)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--min_prompt", type=int, default=20)
  ap.add_argument("--max_prompt", type=int, default=120)
  ap.add_argument("--new_tokens", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--torch_device", default="cpu", help="cpu, or cuda to compare on a GPU (jax uses its default)")
  args = ap.parse_args()

  import jax
  import torch
  from transformers import PhiConfig, PhiForCausalLM

  from phi1_jax.model import hf as convert
  from phi1_jax.model.phi import model_from_params
  from phi1_jax.inference.sampler import generate

  if jax.default_backend() != "cpu":  # torch computes float32 matmuls in full float32 by default
    jax.config.update("jax_default_matmul_precision", "highest")

  torch.manual_seed(0)
  hf_cfg = PhiConfig(
    vocab_size=args.vocab_size,
    hidden_size=args.d_model,
    intermediate_size=4 * args.d_model,
    num_hidden_layers=args.n_layers,
    num_attention_heads=args.n_heads,
    max_position_embeddings=2048,
    pad_token_id=0,
    bos_token_id=None,
    eos_token_id=None,
  )
  hf = PhiForCausalLM(hf_cfg).eval()
  tensors = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  cfg, params = convert.hf_to_params(hf_cfg.to_dict(), tensors)
  model = model_from_params(cfg, params)

  rng = np.random.RandomState(0)
  lengths = rng.randint(args.min_prompt, args.max_prompt + 1, args.batch)
  prompts = [rng.randint(1, args.vocab_size, n).tolist() for n in lengths]
  T = max(lengths)
  ids = torch.zeros((args.batch, T), dtype=torch.long)  # left padding, as ours
  attn = torch.zeros((args.batch, T), dtype=torch.long)
  for b, p in enumerate(prompts):
    ids[b, T - len(p) :] = torch.tensor(p)
    attn[b, T - len(p) :] = 1
  n_new = args.batch * args.new_tokens
  hf, ids, attn = hf.to(args.torch_device), ids.to(args.torch_device), attn.to(args.torch_device)

  def run_jax():
    return generate(model, prompts, max_new_tokens=args.new_tokens)

  def run_hf():
    with torch.inference_mode():
      out = hf.generate(
        input_ids=ids,
        attention_mask=attn,
        do_sample=False,
        use_cache=True,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        pad_token_id=0,
      )
    return out[:, T:].tolist()

  jax_rows, hf_rows = run_jax(), run_hf()  # warm-up: compile / allocate
  times = {run_jax: [], run_hf: []}
  for _ in range(args.repeats):  # interleaved, so a noisy neighbour slows both alike
    for fn in times:
      start = time.perf_counter()
      fn()
      times[fn].append(time.perf_counter() - start)
  jax_s, hf_s = min(times[run_jax]), min(times[run_hf])
  same = sum(a == b for a, b in zip(jax_rows, hf_rows))
  torch_on = torch.cuda.get_device_name() if args.torch_device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
  print(f"device: jax {jax.devices()[0].device_kind}, torch {torch_on}")
  print(
    f"model: d_model={cfg.d_model} layers={cfg.n_layers} heads={cfg.n_heads} vocab={cfg.vocab_size}; "
    f"batch={args.batch}, prompt lengths {min(lengths)}..{max(lengths)}, {args.new_tokens} new tokens each"
  )
  print(f"phi1_jax.inference.sampler.generate: {n_new / jax_s:9.1f} tokens/s ({jax_s:.3f}s)")
  print(f"transformers generate:    {n_new / hf_s:9.1f} tokens/s ({hf_s:.3f}s)")
  print(f"ratio phi1_jax / transformers: {hf_s / jax_s:.2f}x; identical greedy rows: {same}/{args.batch}")


if __name__ == "__main__":
  main()
