r"""Compile the real train step for a target mesh without allocating it; report memory and FLOPs.

    python -m phi1_jax.plan --config=configs/phi1.py --mesh=data=1,fsdp=8,tensor=1 --devices=8

The state and batch are `jax.ShapeDtypeStruct`s carrying the mesh's shardings (from
`train.state_shardings`, the trainer's own), so no weights exist; the step is `train.jit_train_step`
lowered and compiled by XLA. Printed per device: arguments (state + batch), outputs, temporaries,
generated code, and their peak estimate; per step: global batch, tokens and FLOPs.

--devices=N makes N simulated CPU devices (set before jax starts), for planning a mesh this
machine does not have; the figures are then the CPU backend's, a guide to GPU/TPU needs rather
than their exact value. On a GPU or TPU host leave it out: the plan uses the devices present.
Config overrides work as in the trainer: --config.grad_accum_steps=16.
"""

from __future__ import annotations

import os
import sys

from phi1_jax import cli

PROG = "python -m phi1_jax.plan"


def _flag_value(argv, name: str) -> str | None:
  """The last value given as --name=V or --name V (absl's two spellings), else None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _simulate_devices(argv) -> None:
  """--devices=N: N host-platform devices. XLA reads XLA_FLAGS once, when jax first starts."""
  n = _flag_value(argv, "devices")
  if n is None:
    return
  if not n.isdigit():
    cli.fail(PROG, f"--devices={n}: expected a number of devices >= 1 (0: the devices present)")
  if int(n) > 0:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
  _simulate_devices(sys.argv)

import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from phi1_jax.model import sharding
from phi1_jax.train import loop as train  # noqa: E402
from phi1_jax.train.metrics import flops_per_token  # noqa: E402

_CONFIG = train._CONFIG  # the trainer's --config flag (and its --config.* overrides)
_MESH = flags.DEFINE_string("mesh", "", "data=D,fsdp=F,tensor=T (one may be -1); default: the config's mesh.")
flags.DEFINE_integer("devices", 0, "Simulated CPU devices (read before jax starts); 0: the devices present.")
flags.declare_key_flag("config")  # --help lists the trainer's --config beside plan's own flags

GiB = 2**30


def parse_mesh(text: str) -> dict[str, int]:
  """'data=1,fsdp=8,tensor=1' -> {'data': 1, 'fsdp': 8, 'tensor': 1}; unnamed axes are 1."""
  sizes = dict.fromkeys(sharding.MESH_AXES, 1)
  for item in text.split(","):
    name, _, value = item.partition("=")
    if name.strip() not in sizes or not value.strip().lstrip("-").isdigit():
      raise train.UserError(f"--mesh item {item!r}: expected one of {'/'.join(sharding.MESH_AXES)}=INT")
    sizes[name.strip()] = int(value)
  return sizes


def plan(config) -> dict:
  """Lowers and compiles the train step for config.mesh on this process's devices; returns the figures."""
  train.check_config(config)
  model_cfg = train.model_config_of(config)
  try:
    mesh = sharding.make_mesh(config.mesh)
  except ValueError as e:
    raise train.UserError(f"{e} (on CPU, --devices=N simulates N devices)") from None
  G = config.grad_accum_steps
  micro = config.batch_size // G
  n_batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if micro % n_batch_shards:
    raise train.UserError(
      f"microbatch of {micro} sequences (batch_size / grad_accum_steps) does not split "
      f"over data x fsdp = {n_batch_shards} devices"
    )
  graphdef, abstract_state, state_shard, tx, _ = train.state_shardings(config, mesh)
  tokens = jax.ShapeDtypeStruct((G, micro, config.seq_len + 1), jnp.int32, sharding=sharding.batch_sharding(mesh, 1))
  t0 = time.perf_counter()
  lowered = train.jit_train_step(graphdef, tx, config, mesh, state_shard).lower(abstract_state, tokens)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()

  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per module
  tokens_per_step = config.batch_size * config.seq_len
  param_count = sum(x.size for x in jax.tree.leaves(abstract_state["params"]))
  state_bytes = sum(_shard_bytes(x) for x in jax.tree.leaves(abstract_state))
  figures = {
    "mesh": dict(mesh.shape),
    "devices": mesh.size,
    "platform": jax.devices()[0].platform,
    "params": param_count,
    "global_batch": config.batch_size,
    "grad_accum_steps": G,
    "microbatch_per_device": micro // n_batch_shards,
    "seq_len": config.seq_len,
    "tokens_per_step": tokens_per_step,
    "model_flops_per_step": flops_per_token(model_cfg, config.seq_len) * tokens_per_step,
    "xla_flops_per_device": float(cost.get("flops", 0.0)) if cost else None,
    "state_bytes_per_device": state_bytes,
    "lower_s": t1 - t0,
    "compile_s": t2 - t1,
  }
  if mem is not None:
    figures.update(
      argument_bytes=mem.argument_size_in_bytes,
      output_bytes=mem.output_size_in_bytes,
      alias_bytes=mem.alias_size_in_bytes,
      temp_bytes=mem.temp_size_in_bytes,
      generated_code_bytes=mem.generated_code_size_in_bytes,
      # Donated state: outputs reuse the arguments' buffers (alias), so they count once.
      peak_bytes=(
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
        + mem.generated_code_size_in_bytes
      ),
    )
  return figures


def _shard_bytes(x) -> int:
  """Bytes of one device's shard of an abstract array."""
  return math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize


def report(f: dict) -> str:
  lines = [
    f"mesh {f['mesh']} on {f['devices']} {f['platform']} devices; {f['params']:,} parameters",
    f"batch {f['global_batch']} sequences x {f['seq_len']} = {f['tokens_per_step']:,} tokens per step "
    f"({f['grad_accum_steps']} microbatches, {f['microbatch_per_device']} sequences per device each)",
    f"FLOPs per step: {f['model_flops_per_step']:.3e} (model formula, all devices)"
    + (
      f"; XLA counts {f['xla_flops_per_device']:.3e} per device, each loop body (layer scan, microbatches) once"
      if f["xla_flops_per_device"]
      else ""
    ),
    f"lower {f['lower_s']:.1f} s, compile {f['compile_s']:.1f} s",
    f"per device: state {f['state_bytes_per_device'] / GiB:.2f} GiB",
  ]
  if "peak_bytes" in f:
    lines.append(
      f"per device (compiled): arguments {f['argument_bytes'] / GiB:.2f} GiB, outputs {f['output_bytes'] / GiB:.2f} GiB "
      f"(aliased {f['alias_bytes'] / GiB:.2f}), temporaries {f['temp_bytes'] / GiB:.2f} GiB, "
      f"code {f['generated_code_bytes'] / 2**20:.1f} MiB; peak about {f['peak_bytes'] / GiB:.2f} GiB"
    )
  return "\n".join(lines)


def parse_flags(argv):
  """absl flag parsing with every mistake as one line and exit code 2.

  --config's file is checked first: ml_collections defers a missing file's error to its first use,
  as two chained tracebacks; an error in the file's own code is named with its line."""
  if any(a.split("=")[0] in ("-h", "-?", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
    try:
      return train.parse_flags(argv)
    except SystemExit as stop:  # absl ends its help with exit code 1; help that was asked for is no failure
      sys.exit(0 if stop.code == 1 else stop.code)
  config_arg = _flag_value(argv[1:], "config")
  if config_arg is None:
    cli.fail(PROG, "--config is required, e.g. --config=configs/phi1.py")
  config_file = config_arg.split(":", 1)[0]  # "file.py:arg" passes arg to get_config
  if not os.path.isfile(config_file):
    cli.fail(
      PROG, f"--config={config_arg}: {'is a folder, not a' if os.path.isdir(config_file) else 'no such'} config file"
    )
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 (a bad flag, the config file's own code, an unknown override)
    cli.fail(PROG, _flag_problem(e, config_arg, config_file))


def _flag_problem(error: Exception, config_arg: str, config_file: str) -> str:
  """One line for an exception raised while parsing flags, loading the config file or its overrides."""
  where = os.path.abspath(config_file)
  chain, e = [], error
  while e is not None and e not in chain:  # ml_collections re-raises the file's errors as new ones
    chain.append(e)
    e = e.__cause__ or e.__context__
  for e in chain:
    if isinstance(e, SyntaxError) and e.filename and os.path.abspath(e.filename) == where:
      return f"--config={config_arg}: line {e.lineno}: SyntaxError: {e.msg}"
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == where]
    if lines:
      return f"--config={config_arg}: line {lines[-1]}: {type(e).__name__}: {str(e).splitlines()[0]}"
  text = str(error).strip()
  if isinstance(error, flags.Error):  # an unknown flag, a value of the wrong type
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # ml_collections puts a config file's traceback in the message: its last line says what went wrong
    return lines[0] if len(lines) == 1 else f"{lines[0].split(': ')[0]}: {lines[-1]}"
  if "get_config" in text:
    return f"--config={config_arg}: the file defines no get_config()"
  if isinstance(error, (AttributeError, KeyError)):  # ml_collections: an override of a field the config lacks
    text = text.encode().decode("unicode_escape")
    key, hint = re.search(r"'(\w+)'", text), re.search(r'Did you mean "(\w+)"', text)
    return f"unknown config key {key.group(1) if key else text!r} in the --config.* overrides" + (
      f" (did you mean {hint.group(1)!r}?)" if hint else ""
    )
  return f"--config={config_arg}: {type(error).__name__}: {text.splitlines()[-1] if text else ''}"


def main(argv):
  if len(argv) > 1:
    cli.fail(PROG, f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # jax logs its backend search at INFO
  config = _CONFIG.value
  try:
    if _MESH.value:
      config.mesh.update(parse_mesh(_MESH.value))
    print(report(plan(config)), flush=True)
  except train.UserError as e:
    cli.fail(PROG, e)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
