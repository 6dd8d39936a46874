"""Train-step throughput: phi1_jax against transformers' PhiForCausalLM + torch AdamW.

Both sides train the same Phi (same shapes, same initial weights through the converter, same
batches, no dropout) with the same optimizer: AdamW (b1 0.9, b2 0.95, eps 1e-8, weight decay 0.1
on matrices only, constant lr) after global-norm gradient clipping at 1.0.

  phi1_jax:     the trainer's own `make_train_step` + `make_optimizer`, jitted, state donated;
                --dtype is model.dtype (float32 parameters, compute in that dtype), attention
                --attention_impl (auto: cuDNN's fused attention on GPU in 16-bit, else XLA).
  transformers: PhiForCausalLM (attn_implementation "sdpa") forward, cross-entropy, backward,
                `clip_grad_norm_`, `torch.optim.AdamW` (fused=True on CUDA), with
                torch.set_num_threads(os.cpu_count()); with --dtype=bfloat16 the forward and loss
                run under torch.autocast(bfloat16) over float32 parameters (mixed precision, as
                phi1_jax computes).

The first step's losses (same weights, same batch) must agree (to 1e-4 in float32, 2% in bf16),
so the two compute the same thing.
Warm-up steps are not timed; then the two are timed in turns (`--repeats` rounds of `--steps` steps
each), so load from other jobs hits both alike, and the medians are printed with their ratio.

    python benchmarks/train_throughput.py [--steps=5] [--repeats=5] [--warmup=3]
    # phi-1-small on one GPU in bfloat16, both frameworks on the same card:
    python benchmarks/train_throughput.py --torch_device=cuda --dtype=bfloat16 --d_model=1024 --layers=20 \
        --heads=16 --mlp=4096 --vocab=51200 --seq_len=2048 --batch=8 --steps=5 --repeats=3
"""

import argparse
import contextlib
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from phi1_jax.model import hf as convert
from phi1_jax.config import base_config, model_config
from phi1_jax.model.phi import ModelConfig, Phi
from phi1_jax.train.state import decay_mask, make_optimizer
from phi1_jax.train.step import make_train_step


def make_config(args):
  c = base_config()
  c.model = model_config(
    vocab_size=args.vocab,
    d_model=args.d_model,
    n_layers=args.layers,
    n_heads=args.heads,
    head_dim=args.d_model // args.heads,
    mlp_dim=args.mlp,
    rotary_dim=args.d_model // args.heads // 2,
    max_seq_len=args.seq_len,
    eos_id=0,
    scan_layers=args.scan_layers,
    dtype=args.dtype,
    attention_impl=args.attention_impl,
  )
  c.seq_len = args.seq_len
  c.batch_size = args.batch
  c.total_steps = 1_000_000
  c.optimizer.lr = 1e-3
  c.optimizer.end_lr = 1e-3  # with no warmup: a constant learning rate, as torch's below
  c.optimizer.warmup_steps = 0
  return c


class JaxSide:
  def __init__(self, config, params):
    cfg = ModelConfig.from_dict(config.model.to_dict())
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Phi(cfg, rngs=nnx.Rngs(0))))
    tx, _ = make_optimizer(config)
    params = jax.tree.map(jnp.asarray, params)
    self.state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    self.step_fn = jax.jit(make_train_step(graphdef, tx, config), donate_argnums=0)

  def step(self, tokens_GxBxL1):
    self.state, metrics = self.step_fn(self.state, tokens_GxBxL1)
    return metrics

  def run(self, batches):
    loss = None
    for b in batches:
      loss = self.step(b)["loss"]
    jax.block_until_ready(self.state)
    return None if loss is None else float(loss)


class TorchSide:
  def __init__(self, config, params, tmp, device, dtype):
    cfg = ModelConfig.from_dict(config.model.to_dict())
    hf_config, tensors = convert.params_to_hf(cfg, params)
    convert.write_hf_dir(tmp, hf_config, tensors)
    self.model = (
      transformers.PhiForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="sdpa")
      .to(device)
      .train()
    )
    opt = config.optimizer
    decay, no_decay = [], []
    for name, p in self.model.named_parameters():  # decay_mask's rule: no decay on biases, LayerNorms
      (no_decay if name.endswith(".bias") or "layernorm" in name else decay).append(p)
    self.opt = torch.optim.AdamW(
      [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
      lr=opt.lr,
      betas=(opt.b1, opt.b2),
      eps=opt.eps,
      fused=device == "cuda",
    )
    self.autocast = (
      (lambda: torch.autocast(device_type=device, dtype=torch.bfloat16))
      if dtype == "bfloat16"
      else contextlib.nullcontext
    )
    self.n_decayed = sum(p.numel() for p in decay)
    self.grad_clip = opt.grad_clip
    self.vocab = cfg.vocab_size

  def step(self, tokens_BxL1):
    with self.autocast():
      logits = self.model(input_ids=tokens_BxL1[:, :-1]).logits
      loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, self.vocab), tokens_BxL1[:, 1:].reshape(-1))
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
    self.opt.step()
    return loss.detach()

  def run(self, batches):
    loss = None
    for b in batches:
      loss = self.step(b)
    return None if loss is None else float(loss)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--mlp", type=int, default=1024)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument(
    "--scan_layers",
    action=argparse.BooleanOptionalAction,
    default=False,
    help="model.scan_layers (default off: a small model's step runs faster unrolled)",
  )
  parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat and side")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side (compile, allocator)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--torch_device", default="cpu", help="cpu, or cuda to compare on a GPU (jax uses its default)")
  parser.add_argument(
    "--dtype",
    default="float32",
    choices=("float32", "bfloat16"),
    help="compute dtype of both sides (parameters and optimizer stay float32)",
  )
  parser.add_argument("--attention_impl", default="auto", help="phi1_jax model.attention_impl")
  args = parser.parse_args()
  if jax.default_backend() != "cpu" and args.dtype == "float32":  # torch: full float32 matmuls by default
    jax.config.update("jax_default_matmul_precision", "highest")

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(args.seed)
  config = make_config(args)
  cfg = ModelConfig.from_dict(config.model.to_dict())
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(Phi(cfg, rngs=nnx.Rngs(args.seed)), nnx.Param)))
  n_params = sum(x.size for x in jax.tree.leaves(params))

  B, L = args.batch, args.seq_len
  n_batches = args.warmup + args.steps
  tokens = np.random.RandomState(args.seed).randint(0, args.vocab, (n_batches, B, L + 1)).astype(np.int32)
  jax_batches = [jnp.asarray(t[None]) for t in tokens]  # [G=1, B, L+1]
  torch_batches = [torch.from_numpy(t).long().to(args.torch_device) for t in tokens]

  ours = JaxSide(config, params)
  with tempfile.TemporaryDirectory() as tmp:
    ref = TorchSide(config, params, os.path.join(tmp, "hf"), args.torch_device, args.dtype)
  n_decayed = sum(x.size for x, keep in zip(jax.tree.leaves(params), jax.tree.leaves(decay_mask(params))) if keep)
  assert ref.n_decayed == n_decayed, "torch weight-decay groups differ from phi1_jax.train.state.decay_mask"

  print(
    f"Phi {n_params / 1e6:.2f}M params: d_model {args.d_model}, {args.layers} layers, {args.heads} heads x "
    f"{args.d_model // args.heads}, mlp {args.mlp}, vocab {args.vocab}, rotary {cfg.rotary_dim}, "
    f"scan_layers {cfg.scan_layers}; "
    f"batch {B} x seq_len {L} = {B * L} tokens/step; {args.dtype} compute, attention {args.attention_impl}, "
    f"AdamW + clip 1.0"
  )
  torch_on = torch.cuda.get_device_name() if args.torch_device == "cuda" else f"{torch.get_num_threads()} threads"
  print(
    f"jax {jax.__version__} ({jax.devices()[0].device_kind}), torch {torch.__version__} "
    f"({torch_on}), transformers {transformers.__version__}, {os.cpu_count()} CPUs"
  )

  # First step from the same weights on the same batch: the losses must agree; the second step's
  # loss (after one AdamW update on each side) checks the optimizers agree too.
  losses = []
  for i in range(2):
    j = float(ours.step(jax_batches[i])["loss"])
    t = float(ref.step(torch_batches[i]))
    losses.append((j, t))
    print(f"step {i + 1} loss: phi1_jax {j:.7f}  transformers {t:.7f}  |diff| {abs(j - t):.1e}")
  tolerance = 1e-4 if args.dtype == "float32" else 0.02 * abs(losses[0][1])
  assert abs(losses[0][0] - losses[0][1]) < tolerance, "first-step losses differ: not the same computation"

  t0 = time.perf_counter()
  ours.run(jax_batches[2 : args.warmup])
  ref.run(torch_batches[2 : args.warmup])
  print(f"warm-up: {args.warmup} steps each (compile included), {time.perf_counter() - t0:.1f} s")

  timed_jax, timed_torch = jax_batches[args.warmup :], torch_batches[args.warmup :]
  rates = {"phi1_jax": [], "transformers": []}
  print(f"\n{'repeat':>6}  {'phi1_jax tok/s':>15}  {'transformers tok/s':>18}  {'ratio':>6}")
  for r in range(args.repeats):
    for name, side, batches in (("phi1_jax", ours, timed_jax), ("transformers", ref, timed_torch)):
      start = time.perf_counter()
      side.run(batches)
      rates[name].append(args.steps * B * L / (time.perf_counter() - start))
    print(
      f"{r + 1:>6}  {rates['phi1_jax'][-1]:>15.0f}  {rates['transformers'][-1]:>18.0f}  "
      f"{rates['phi1_jax'][-1] / rates['transformers'][-1]:>6.2f}"
    )
  med_j, med_t = statistics.median(rates["phi1_jax"]), statistics.median(rates["transformers"])
  print(f"{'median':>6}  {med_j:>15.0f}  {med_t:>18.0f}  {med_j / med_t:>6.2f}")
  print(
    f"\nphi1_jax / transformers train-step throughput: {med_j / med_t:.2f}x "
    f"(median of {args.repeats} interleaved repeats of {args.steps} steps)"
  )


if __name__ == "__main__":
  main()
