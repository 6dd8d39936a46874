"""Converts Phi checkpoints between Hugging Face (config.json + safetensors) and phi1_jax (Orbax).

  python -m phi1_jax.convert hf-to-orbax --hf_dir DIR --out CKPT_DIR
  python -m phi1_jax.convert orbax-to-hf --checkpoint CKPT_DIR --out DIR

A phi1_jax checkpoint is `CKPT_DIR/params` (an Orbax checkpoint of the pure dict
`nnx.to_pure_dict(nnx.state(model, nnx.Param))`) plus `CKPT_DIR/model_config.json`
(`dataclasses.asdict(ModelConfig)`). `--checkpoint` also takes a trainer step folder
(`WORKDIR/checkpoints/<step>`, Orbax item `params`, or `state` holding "params") or a trainer
workdir (latest step).

Everything is validated (config, every tensor name and shape) before the output folder is
created, and a non-empty output folder is never written into.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import safetensors
import safetensors.numpy
from flax import nnx

from phi1_jax import paths
from phi1_jax.cli import out_dir_problem
from phi1_jax.data.tokenizer import EOS_TOKEN
from phi1_jax.model.phi import ModelConfig, Phi, abstract_model

HF_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are GELU with the tanh approximation
# Buffers some transformers versions store although they follow from the config.
HF_DERIVED_BUFFERS = ("rotary_emb.inv_freq",)
_NP_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}


# ---------------------------------------------------------------- configs


def hf_config_to_model_config(hf: dict) -> ModelConfig:
  """ModelConfig from a transformers PhiConfig dict (transformers 4 or 5 layout)."""

  def need(key):
    if hf.get(key) is None:
      raise ValueError(f"config.json: missing {key!r}")
    return hf[key]

  if hf.get("model_type", "phi") != "phi":
    raise ValueError(f"config.json: model_type={hf['model_type']!r}, only 'phi' (PhiForCausalLM) is supported")
  if hf.get("qk_layernorm"):
    raise ValueError("config.json: qk_layernorm=true is not supported by phi1_jax.model.phi")
  if hf.get("tie_word_embeddings"):
    raise ValueError("config.json: tie_word_embeddings=true is not supported (phi-1's lm_head is untied)")
  act = hf.get("hidden_act", "gelu_new")
  if act not in HF_ACTIVATIONS:
    raise ValueError(f"config.json: hidden_act={act!r} is not supported, only {HF_ACTIVATIONS}")
  d_model, n_heads = need("hidden_size"), need("num_attention_heads")
  if d_model % n_heads:
    raise ValueError(f"config.json: hidden_size={d_model} is not a multiple of num_attention_heads={n_heads}")
  kv_heads = hf.get("num_key_value_heads")
  if kv_heads not in (None, n_heads):
    raise ValueError(
      f"config.json: num_key_value_heads={kv_heads} != num_attention_heads={n_heads} "
      "(grouped-query attention) is not supported"
    )
  # transformers 5 nests these in rope_parameters; older files (the released phi-1) keep them top level.
  rope = hf.get("rope_parameters") or {}
  rope_scaling = hf.get("rope_scaling") or {}
  for name, value in (
    ("rope_parameters.rope_type", rope.get("rope_type")),
    ("rope_scaling.rope_type", rope_scaling.get("rope_type", rope_scaling.get("type"))),
  ):
    if value not in (None, "default"):
      raise ValueError(f"config.json: {name}={value!r} is not supported, only plain rotary ('default')")
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  factor = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))
  head_dim = d_model // n_heads
  return ModelConfig(
    vocab_size=need("vocab_size"),
    d_model=d_model,
    n_layers=need("num_hidden_layers"),
    n_heads=n_heads,
    head_dim=head_dim,
    mlp_dim=need("intermediate_size"),
    rotary_dim=int(factor * head_dim),  # as transformers' PhiAttention computes it
    rope_theta=float(theta),
    max_seq_len=hf.get("max_position_embeddings", 2048),
    ln_eps=hf.get("layer_norm_eps", 1e-5),
    embd_dropout=hf.get("embd_pdrop", 0.0),
    attn_dropout=hf.get("attention_dropout", 0.0),
    resid_dropout=hf.get("resid_pdrop", 0.0),
    init_std=hf.get("initializer_range", 0.02),
  )


def model_config_to_hf_config(cfg: ModelConfig) -> dict:
  """A transformers PhiConfig dict; rope settings both nested (transformers 5) and top level (4)."""
  if cfg.d_model != cfg.n_heads * cfg.head_dim:
    raise ValueError(
      f"model_config: d_model={cfg.d_model} != n_heads*head_dim={cfg.n_heads * cfg.head_dim}, "
      "which transformers' Phi cannot represent"
    )
  factor = cfg.rotary_dim / cfg.head_dim
  if int(factor * cfg.head_dim) != cfg.rotary_dim:
    factor = float(np.nextafter(factor, 1.0))  # so that int(factor * head_dim) gives rotary_dim back
  eos_id = cfg.eos_id if 0 <= cfg.eos_id < cfg.vocab_size else None
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta, "partial_rotary_factor": factor}
  return {
    "architectures": ["PhiForCausalLM"],
    "model_type": "phi",
    "vocab_size": cfg.vocab_size,
    "hidden_size": cfg.d_model,
    "intermediate_size": cfg.mlp_dim,
    "num_hidden_layers": cfg.n_layers,
    "num_attention_heads": cfg.n_heads,
    "num_key_value_heads": cfg.n_heads,
    "hidden_act": "gelu_new",
    "max_position_embeddings": cfg.max_seq_len,
    "layer_norm_eps": cfg.ln_eps,
    "embd_pdrop": cfg.embd_dropout,
    "attention_dropout": cfg.attn_dropout,
    "resid_pdrop": cfg.resid_dropout,
    "rope_parameters": rope,
    "rope_theta": cfg.rope_theta,
    "partial_rotary_factor": factor,
    "qk_layernorm": False,
    "tie_word_embeddings": False,
    "initializer_range": cfg.init_std,
    # <|endoftext|> is both in the CodeGen tokenizer phi-1 uses; tiny test vocabularies lack it.
    "bos_token_id": eos_id,
    "eos_token_id": eos_id,
    "use_cache": True,
    "torch_dtype": "float32",
    "dtype": "float32",
  }


# ---------------------------------------------------------------- tensor layout


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """One HF tensor: its name, HF shape, and the exact (reshape/transpose only) maps both ways."""

  hf_name: str
  hf_shape: tuple
  to_jax: Callable = lambda x: x
  to_hf: Callable = lambda x: x


def _layer_layout(cfg: ModelConfig) -> dict[str, _Tensor]:
  """Per-layer tensors keyed by the phi1_jax `blocks` name; HF names are under model.layers.{i}."""
  D, N, H, F = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.mlp_dim
  layout = {
    "ln_scale": _Tensor("input_layernorm.weight", (D,)),
    "ln_bias": _Tensor("input_layernorm.bias", (D,)),
    "o_kernel": _Tensor(
      "self_attn.dense.weight", (D, N * H), lambda w: w.T.reshape(N, H, D), lambda k: k.reshape(N * H, D).T
    ),
    "o_bias": _Tensor("self_attn.dense.bias", (D,)),
    "fc1_kernel": _Tensor("mlp.fc1.weight", (F, D), lambda w: w.T, lambda k: k.T),
    "fc1_bias": _Tensor("mlp.fc1.bias", (F,)),
    "fc2_kernel": _Tensor("mlp.fc2.weight", (D, F), lambda w: w.T, lambda k: k.T),
    "fc2_bias": _Tensor("mlp.fc2.bias", (D,)),
  }
  for n in "qkv":  # torch Linear weight is [out, in]; ours is [in, heads, head_dim]
    layout[f"{n}_kernel"] = _Tensor(
      f"self_attn.{n}_proj.weight", (N * H, D), lambda w: w.T.reshape(D, N, H), lambda k: k.reshape(D, N * H).T
    )
    layout[f"{n}_bias"] = _Tensor(
      f"self_attn.{n}_proj.bias", (N * H,), lambda b: b.reshape(N, H), lambda b: b.reshape(N * H)
    )
  return layout


def _top_layout(cfg: ModelConfig) -> dict[str, _Tensor]:
  V, D = cfg.vocab_size, cfg.d_model
  return {
    "embed": _Tensor("model.embed_tokens.weight", (V, D)),
    "final_ln_scale": _Tensor("model.final_layernorm.weight", (D,)),
    "final_ln_bias": _Tensor("model.final_layernorm.bias", (D,)),
    "lm_head_kernel": _Tensor("lm_head.weight", (V, D), lambda w: w.T, lambda k: k.T),
    "lm_head_bias": _Tensor("lm_head.bias", (V,)),
  }


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple]:
  """Every tensor name a transformers PhiForCausalLM checkpoint holds, with its shape."""
  shapes = {t.hf_name: t.hf_shape for t in _top_layout(cfg).values()}
  for i in range(cfg.n_layers):
    shapes.update({f"model.layers.{i}.{t.hf_name}": t.hf_shape for t in _layer_layout(cfg).values()})
  return shapes


def param_shapes(cfg: ModelConfig) -> dict[str, tuple]:
  """Every phi1_jax parameter as a '/'-joined path, with its shape (computed abstractly)."""
  state = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
  return {path: tuple(x.shape) for path, x in _flatten(state).items()}


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


def check_shapes(expected: dict[str, tuple], found: dict[str, tuple], where: str) -> None:
  """Raises a one-line ValueError on the first missing, extra or wrongly shaped tensor."""
  problems = []
  for name in sorted(set(expected) | set(found)):
    want, got = expected.get(name), found.get(name)
    if want is None:
      problems.append(f"{name}: unexpected tensor (expected shape none, found {got})")
    elif got is None:
      problems.append(f"{name}: missing tensor (expected shape {want}, found none)")
    elif tuple(want) != tuple(got):
      problems.append(f"{name}: wrong shape (expected {tuple(want)}, found {tuple(got)})")
  if problems:
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    raise ValueError(f"{where}: {problems[0]}{more}")


# ---------------------------------------------------------------- HF <-> pure params


def hf_to_params(config_json: dict, tensors: dict[str, np.ndarray]) -> tuple[ModelConfig, dict]:
  """(ModelConfig, pure params dict of float32 numpy arrays) from a PhiConfig dict and HF tensors."""
  cfg = hf_config_to_model_config(config_json)
  tensors = {k: v for k, v in tensors.items() if not k.endswith(HF_DERIVED_BUFFERS)}
  check_shapes(hf_shapes(cfg), {k: v.shape for k, v in tensors.items()}, "HF checkpoint")

  def f32(x):
    return np.asarray(x).astype(np.float32)  # exact for bf16/fp16 callers; float32 is copied

  params = {key: f32(t.to_jax(tensors[t.hf_name])) for key, t in _top_layout(cfg).items()}
  params["blocks"] = {
    key: np.stack([f32(t.to_jax(tensors[f"model.layers.{i}.{t.hf_name}"])) for i in range(cfg.n_layers)])
    for key, t in _layer_layout(cfg).items()
  }
  return cfg, params


def params_to_hf(cfg: ModelConfig, pure_params: dict) -> tuple[dict, dict[str, np.ndarray]]:
  """(PhiConfig dict, HF tensors as contiguous float32 numpy arrays) from phi1_jax parameters."""
  hf_config = model_config_to_hf_config(cfg)
  flat = _flatten(pure_params)
  check_shapes(param_shapes(cfg), {k: np.shape(v) for k, v in flat.items()}, "phi1_jax params")

  def out(x):
    return np.ascontiguousarray(np.asarray(x, np.float32))

  tensors = {t.hf_name: out(t.to_hf(np.asarray(flat[key]))) for key, t in _top_layout(cfg).items()}
  for key, t in _layer_layout(cfg).items():
    stacked = np.asarray(flat[f"blocks/{key}"])
    for i in range(cfg.n_layers):
      tensors[f"model.layers.{i}.{t.hf_name}"] = out(t.to_hf(stacked[i]))
  return hf_config, tensors


# ---------------------------------------------------------------- HF files


def read_hf_dir(hf_dir) -> tuple[dict, dict[str, np.ndarray]]:
  """config.json and every tensor (float32) of a save_pretrained folder, single or sharded."""
  hf_dir = paths.as_path(hf_dir)
  if not hf_dir.is_dir():
    raise ValueError(
      f"{hf_dir}: {'is a file, not' if hf_dir.exists() else 'not found; expected'} a save_pretrained folder"
    )
  config_path = hf_dir / "config.json"
  if not config_path.is_file():
    raise ValueError(f"{config_path}: not found (expected a save_pretrained folder)")
  config_json = read_json(config_path)
  index_path = hf_dir / "model.safetensors.index.json"
  if index_path.is_file():
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index_path}: has no weight_map object")
    files = sorted(set(weight_map.values()))
  elif (hf_dir / "model.safetensors").is_file():
    files = ["model.safetensors"]
  else:
    files = sorted(p.name for p in hf_dir.glob("*.safetensors"))
  if not files:
    raise ValueError(
      f"{hf_dir}: no *.safetensors files (pytorch_model.bin is not read; "
      "re-save with save_pretrained(safe_serialization=True))"
    )
  tensors = {}
  for name in files:
    path = hf_dir / name
    if not path.is_file():
      raise ValueError(f"{path}: listed in model.safetensors.index.json but not found")
    for key, value in _read_safetensors(path).items():
      if key in tensors:
        raise ValueError(f"{path}: tensor {key} also appears in another shard")
      tensors[key] = value
  return config_json, tensors


def read_json(path: Path) -> dict:
  """A JSON object from `path`; ValueError naming the file when it is not one."""
  try:
    data = json.loads(paths.as_path(path).read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
  return data


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  """Tensors of one file as float32; bf16 (which numpy lacks) is decoded with ml_dtypes."""
  path = paths.local_copy(path)  # safetensors maps a local file
  try:
    with safetensors.safe_open(str(path), framework="np") as f:
      dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
  except safetensors.SafetensorError as e:
    raise ValueError(f"{path}: not a safetensors file ({e})") from None
  unknown = {k: d for k, d in dtypes.items() if d not in _NP_DTYPES}
  if unknown:
    k, d = next(iter(unknown.items()))
    raise ValueError(f"{path}: tensor {k} has dtype {d}; only {sorted(_NP_DTYPES)} are read")
  if "BF16" not in dtypes.values():
    tensors = safetensors.numpy.load_file(str(path))
  else:
    tensors = {
      key: np.frombuffer(spec["data"], _NP_DTYPES[spec["dtype"]]).reshape(spec["shape"])
      for key, spec in safetensors.deserialize(path.read_bytes())
    }
  # float16/bfloat16 -> float32 is exact; float32 arrays are kept as they are.
  return {key: t.astype(np.float32, copy=False) for key, t in tensors.items()}


def write_hf_dir(out_dir, hf_config: dict, tensors: dict[str, np.ndarray]) -> None:
  """config.json + model.safetensors into a new (or empty) folder."""
  out_dir = _fresh_dir(out_dir)
  safetensors.numpy.save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
  # safetensors creates the file 0600; give it the mode any new file gets (0666 less the umask).
  os.chmod(out_dir / "model.safetensors", 0o666 & ~_umask())
  (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")


def _umask() -> int:
  mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
  os.umask(mask)
  return mask


# ---------------------------------------------------------------- Orbax files


# A trainer step folder holds either an item `params` (the pure dict) or an item `state` whose tree is
# {"params": <pure dict>, "opt_state": ..., "step": ...}; only the params are read from it.
_TRAINER_ITEMS = ("params", "state")


def _trainer_item(step_dir):
  return next((step_dir / name for name in _TRAINER_ITEMS if (step_dir / name).is_dir()), None)


def find_params_checkpoint(path):
  """(params_dir, model_config_path) for a converter output, a trainer step folder or workdir,
  on a disk or in a bucket (epath paths).

  params_dir is the Orbax item folder: `params`, or a trainer `state` item holding "params".
  """
  path = paths.absolute(path)
  if path.name.isdigit() and path.parent.name == "checkpoints" and _trainer_item(path):
    if not ocp.utils.is_checkpoint_finalized(path):  # in a bucket, a save cut short keeps its name
      raise ValueError(f"{path}: an unfinished save (no commit_success.txt)")
    params_dir, config_path = _trainer_item(path), path.parent.parent / "model_config.json"  # trainer step
  elif (path / "params").is_dir():
    params_dir, config_path = path / "params", path / "model_config.json"  # converter output
  elif (path / "checkpoints").is_dir():  # trainer workdir: latest finalized step
    steps = [
      s for s in ocp.utils.checkpoint_steps(path / "checkpoints") if _trainer_item(path / "checkpoints" / str(s))
    ]
    if not steps:
      raise ValueError(f"{path / 'checkpoints'}: no finished step folder with a params or state item")
    params_dir, config_path = _trainer_item(path / "checkpoints" / str(max(steps))), path / "model_config.json"
  else:
    raise ValueError(
      f"{path}: not a checkpoint (expected params/ + model_config.json, "
      "a trainer step folder checkpoints/<step>, or a trainer workdir)"
    )
  if not config_path.is_file():
    raise ValueError(f"{config_path}: not found (needed beside the checkpoint for {path})")
  return params_dir, config_path


class _DropMissingMetadataWarning(logging.Filter):
  """Orbax warns on every restore of an item folder, which never holds _CHECKPOINT_METADATA (its
  step folder does); only that one message is dropped, other absl warnings still show."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Metadata file does not exist")


_ABSL_FILTER = _DropMissingMetadataWarning()


def quiet_orbax_metadata_warning() -> None:
  """Installs the filter on absl's logger (idempotent): call where a checkpoint is read."""
  absl_logger = logging.getLogger("absl")
  if _ABSL_FILTER not in absl_logger.filters:
    absl_logger.addFilter(_ABSL_FILTER)


def load_params(ckpt_path) -> tuple[ModelConfig, dict]:
  """(ModelConfig, pure params of float32 numpy arrays) from any folder find_params_checkpoint takes.

  A transformers save_pretrained folder (config.json + safetensors) is read through hf_to_params.
  """
  path = paths.as_path(ckpt_path)
  if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
    return hf_to_params(*read_hf_dir(path))
  params_dir, config_path = find_params_checkpoint(path)
  quiet_orbax_metadata_warning()
  try:
    cfg = ModelConfig.from_dict(read_json(config_path))
  except TypeError as e:  # a field of the wrong kind
    raise ValueError(f"{config_path}: {e}") from None
  expected = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
  if not any(params_dir.iterdir()):
    raise ValueError(f"{params_dir}: empty folder, not an Orbax checkpoint (an unfinished save?)")
  try:
    metadata = ocp.StandardCheckpointer().metadata(params_dir)
  except (OSError, ValueError) as e:
    raise ValueError(f"{params_dir}: not a readable Orbax checkpoint ({str(e).splitlines()[0]})") from None
  tree = getattr(getattr(metadata, "item_metadata", None), "tree", None)
  if not isinstance(tree, dict):
    raise ValueError(f"{params_dir}: not a readable Orbax checkpoint (no array metadata; an unfinished save?)")
  stored = dict(tree)
  nested = "params" in stored and "embed" not in stored  # a trainer `state` item
  found = dict(stored["params"]) if nested else stored
  check_shapes(
    {k: tuple(v.shape) for k, v in _flatten(expected).items()},
    {k: tuple(v.shape) for k, v in _flatten(found).items()},
    str(params_dir),
  )
  # Restore onto one host device whatever sharding the trainer saved with.
  cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=cpu), expected)
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=cpu, dtype=jnp.float32), expected)
  if nested:
    target, restore_args = {"params": target}, {"params": restore_args}
  restored = ocp.PyTreeCheckpointer().restore(
    params_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=nested)
  )  # skips opt_state and step
  return cfg, jax.tree.map(np.asarray, restored["params"] if nested else restored)


def save_params(out_dir, cfg: ModelConfig, pure_params: dict) -> None:
  """Writes out_dir/params (Orbax) and out_dir/model_config.json into a new (or empty) folder."""
  check_shapes(param_shapes(cfg), {k: np.shape(v) for k, v in _flatten(pure_params).items()}, "phi1_jax params")
  out_dir = _fresh_dir(out_dir)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(out_dir.absolute() / "params", pure_params)
  checkpointer.wait_until_finished()
  (out_dir / "model_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")


def model_from_params(cfg: ModelConfig, pure_params: dict) -> Phi:
  """A ready-to-call Phi holding `pure_params` (shapes checked; no random init is computed)."""
  check_shapes(param_shapes(cfg), {k: np.shape(v) for k, v in _flatten(pure_params).items()}, "phi1_jax params")
  model = abstract_model(cfg)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure_params))
  nnx.update(model, state)
  return model


def load_hf(hf_dir) -> tuple[ModelConfig, Phi]:
  """(ModelConfig, Phi) from a transformers save_pretrained folder."""
  cfg, params = hf_to_params(*read_hf_dir(hf_dir))
  return cfg, model_from_params(cfg, params)


def _ensure_writable(out_dir) -> None:
  """Refuses a non-empty output folder, so nothing the user made is overwritten."""
  if paths.is_remote(out_dir):
    raise ValueError(f"--out {out_dir}: write to a local folder (then copy it up: gcloud storage cp -r)")
  out_dir = Path(out_dir)
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
    raise ValueError(f"{out_dir}: already exists and is not an empty folder; choose a new --out")
  problem = out_dir_problem(out_dir)
  if problem:
    raise ValueError(f"--out {out_dir}: {problem}")


def _fresh_dir(out_dir) -> Path:
  _ensure_writable(out_dir)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  return out_dir


# ---------------------------------------------------------------- command line


def hf_to_orbax(hf_dir, out_dir) -> ModelConfig:
  """The hf-to-orbax command: validates everything, then writes out_dir."""
  _ensure_writable(out_dir)
  cfg, params = hf_to_params(*read_hf_dir(hf_dir))
  tokenizer = paths.as_path(hf_dir) / "tokenizer.json"  # kept beside the params, where eval and sample look
  if tokenizer.is_file():
    from phi1_jax.data.tokenizer import load_tokenizer

    try:
      load_tokenizer(tokenizer)
    except ValueError as e:
      print(f"note: tokenizer not copied: {e}", file=sys.stderr)
      tokenizer = None
  save_params(out_dir, cfg, params)
  if tokenizer and tokenizer.is_file():
    paths.copy(tokenizer, Path(out_dir) / "tokenizer.json")
  return cfg


def orbax_to_hf(ckpt, out_dir, log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> ModelConfig:
  """The orbax-to-hf command: validates everything, then writes out_dir (with the tokenizer, when it can)."""
  _ensure_writable(out_dir)
  cfg, params = load_params(ckpt)
  hf_config, tensors = params_to_hf(cfg, params)
  tokenizer = hf_tokenizer_files(ckpt, cfg, log)
  if tokenizer and tokenizer["eos_id"] != hf_config["eos_token_id"]:
    log(
      f"note: the tokenizer's {EOS_TOKEN} is id {tokenizer['eos_id']}, model_config.json's eos_id "
      f"{cfg.eos_id}; config.json takes the tokenizer's"
    )
    hf_config.update(bos_token_id=tokenizer["eos_id"], eos_token_id=tokenizer["eos_id"])
  write_hf_dir(out_dir, hf_config, tensors)
  for name, text in (tokenizer or {}).get("files", {}).items():
    (Path(out_dir) / name).write_text(text)
  return cfg


def hf_tokenizer_files(ckpt, cfg: ModelConfig, log) -> dict | None:
  """tokenizer.json + tokenizer_config.json for `AutoTokenizer`, from the tokenizer kept with the
  checkpoint (a tokenizer.json as it is; a train_tokenizer SentencePiece model converted, same ids);
  None, after one line saying why, when there is none or it cannot be converted."""
  from phi1_jax.data.tokenizer import checkpoint_tokenizer, load_tokenizer, spm_as_hf_tokenizer

  path = checkpoint_tokenizer(ckpt)
  if path is None:
    log(f"note: no tokenizer.model or tokenizer.json kept with {ckpt}; exported the model only")
    return None
  try:
    if path.suffix == ".json":
      eos_id, text = load_tokenizer(path).eos_id, path.read_text()
    else:
      hf = spm_as_hf_tokenizer(path)
      eos_id, text = hf.token_to_id(EOS_TOKEN), hf.to_str()
  except ValueError as e:
    log(f"note: tokenizer not exported, AutoTokenizer will not load the folder: {e}")
    return None
  config = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": EOS_TOKEN,
    "eos_token": EOS_TOKEN,
    "model_max_length": cfg.max_seq_len,
    "clean_up_tokenization_spaces": False,
  }
  return {
    "eos_id": eos_id,
    "files": {"tokenizer.json": text, "tokenizer_config.json": json.dumps(config, indent=2) + "\n"},
  }
