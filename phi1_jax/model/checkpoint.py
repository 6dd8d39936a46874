"""The one checkpoint loader: any checkpoint path to (ModelConfig, params, tokenizer), and the converters.

`resolve(path)` says what a path holds, by one rule, reading only small files:

- a trainer step folder `WORKDIR/checkpoints/<step>` (Orbax item `params`, or `state` holding
  "params"): its weights, the workdir's model_config.json;
- a folder with `params/`: the converter's output (`params/` + model_config.json);
- a folder with `checkpoints/`: a trainer workdir, its latest finished step;
- else a folder with config.json and no model_config.json: a Hugging Face save_pretrained folder.

Any of them may lie in a bucket (gs://, through `phi1_jax.paths`). The tokenizer kept with a
checkpoint is tokenizer.model / tokenizer.json in its folder or its tokenizer/ subfolder, and for
a step folder also in its workdir (the trainer copies it there). `load_params` reads the weights
as float32 numpy arrays on the host whatever sharding they were saved with;
`load_model_and_tokenizer` gives a ready Phi and its tokenizer. A problem is a one-line
ValueError that names the path.

The converter (`python -m phi1_jax.convert`): `hf_to_orbax` writes `OUT/params` (an Orbax
checkpoint of the pure dict `nnx.to_pure_dict(nnx.state(model, nnx.Param))`) and
`OUT/model_config.json` (`dataclasses.asdict(ModelConfig)`); `orbax_to_hf` writes a transformers
folder, with the tokenizer when it can.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from phi1_jax import paths
from phi1_jax.data.tokenizer import EOS_TOKEN, load_tokenizer, spm_as_hf_tokenizer, tokenizer_file
from phi1_jax.model import hf
from phi1_jax.model.config import ModelConfig
from phi1_jax.model.phi import abstract_model, check_shapes, flatten_params, model_from_params, param_shapes

# A trainer step folder holds either an item `params` (the pure dict) or an item `state` whose tree is
# {"params": <pure dict>, "opt_state": ..., "step": ...}; only the params are read from it.
TRAINER_ITEMS = ("params", "state")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """Where a checkpoint's parts lie (what `resolve` found; nothing big is read)."""

  path: Path  # as named, absolute (an epath in a bucket)
  kind: str  # "phi1_jax" or "hf"
  weights: Path  # the HF folder, or the Orbax item read (a workdir's latest finished step)
  config: Path  # model_config.json, or the HF config.json
  tokenizer: Path | None  # tokenizer.model / tokenizer.json kept with it; None if there is none

  def model_config(self) -> ModelConfig:
    """The ModelConfig, read without the weights."""
    if self.kind == "hf":
      return hf.hf_config_to_model_config(hf.read_json(self.config))
    try:
      return ModelConfig.from_dict(hf.read_json(self.config))
    except TypeError as e:  # a field of the wrong kind
      raise ValueError(f"{self.config}: {e}") from None

  def load_params(self) -> tuple[ModelConfig, dict]:
    """(ModelConfig, pure params of float32 numpy arrays)."""
    try:
      if self.kind == "hf":
        return hf.hf_to_params(*hf.read_hf_dir(self.weights))
      cfg = self.model_config()
      return cfg, _restore_params(self.weights, cfg)
    except (OSError, KeyError) as e:
      raise ValueError(f"checkpoint {self.path}: cannot be read ({type(e).__name__}: {e})") from None

  def load_model(self, dtype: str | None = None):
    """A ready Phi holding the weights, compute dtype overridden by `dtype`."""
    cfg, params = self.load_params()
    return model_from_params(dataclasses.replace(cfg, dtype=dtype) if dtype else cfg, params)

  def tokenizer_file(self, tokenizer=None) -> Path:
    """`tokenizer` (a file or its folder) if given, else the one kept with the checkpoint;
    ValueError naming what is missing."""
    if tokenizer:
      try:
        return tokenizer_file(tokenizer)
      except FileNotFoundError as e:
        raise ValueError(f"--tokenizer: {e}") from None
    if self.tokenizer is None:
      raise ValueError(
        f"no tokenizer.model or tokenizer.json in {self.path} (or its tokenizer/ folder); pass --tokenizer=PATH"
      )
    return self.tokenizer


def _is_step_folder(path) -> bool:
  return path.name.isdigit() and path.parent.name == "checkpoints"


def _trainer_item(step_dir):
  return next((step_dir / name for name in TRAINER_ITEMS if (step_dir / name).is_dir()), None)


def resolve(path, flag: str | None = None) -> Checkpoint:
  """What `path` holds (the module's rule); ValueError naming the problem, prefixed `{flag}={path}`
  when a flag is given (else the path), before anything big is read."""
  where = f"{flag}={path}" if flag else str(path)
  problem = paths.bucket_problem(path)
  if problem:
    raise ValueError(f"{where}: {problem}")
  path = paths.absolute(path)
  if not path.exists():
    raise ValueError(f"{where}: not found")
  kind, tokenizer_bases = "phi1_jax", [path]
  if _is_step_folder(path) and _trainer_item(path):
    if not ocp.utils.is_checkpoint_finalized(path):  # in a bucket, a save cut short keeps its name
      raise ValueError(f"{path}: an unfinished save (no commit_success.txt)")
    weights, config = _trainer_item(path), path.parent.parent / "model_config.json"
    tokenizer_bases.append(path.parent.parent)
  elif (path / "params").is_dir():  # the converter's output
    weights, config = path / "params", path / "model_config.json"
  elif (path / "checkpoints").is_dir():  # a trainer workdir: its latest finished step
    steps = [
      s for s in ocp.utils.checkpoint_steps(path / "checkpoints") if _trainer_item(path / "checkpoints" / str(s))
    ]
    if not steps:
      raise ValueError(f"{path / 'checkpoints'}: no finished step folder with a params or state item")
    weights, config = _trainer_item(path / "checkpoints" / str(max(steps))), path / "model_config.json"
  elif (path / "config.json").is_file() and not (path / "model_config.json").is_file():
    kind, weights, config = "hf", path, path / "config.json"
  else:
    raise ValueError(
      f"{where}: not a checkpoint (expected params/ + model_config.json, a trainer step folder "
      "checkpoints/<step>, a trainer workdir, or a Hugging Face folder with config.json)"
    )
  if not config.is_file():
    raise ValueError(f"{config}: not found (needed beside the checkpoint for {path})")
  return Checkpoint(path, kind, weights, config, _kept_tokenizer(tokenizer_bases))


def _kept_tokenizer(bases) -> Path | None:
  for folder in (f for base in bases for f in (base, base / "tokenizer")):
    if folder.is_dir():
      try:
        return tokenizer_file(folder)
      except FileNotFoundError:
        pass
  return None


def load_params(path) -> tuple[ModelConfig, dict]:
  """(ModelConfig, pure params of float32 numpy arrays) from any checkpoint `resolve` takes."""
  return resolve(path).load_params()


def load_model_and_tokenizer(path, tokenizer=None, dtype: str | None = None, flag: str = "--checkpoint"):
  """(Phi, Tokenizer) from any checkpoint `resolve` takes, compute dtype overridden by `dtype`.
  ValueError (one line) for a bad checkpoint, a missing tokenizer or a tokenizer larger than the
  model's vocabulary, found before the weights are read."""
  checkpoint = resolve(path, flag)
  tok_path = checkpoint.tokenizer_file(tokenizer)
  tok = load_tokenizer(tok_path)
  vocab_size = checkpoint.model_config().vocab_size
  if tok.vocab_size > vocab_size:
    raise ValueError(f"tokenizer {tok_path} has {tok.vocab_size} tokens, the model only {vocab_size}")
  return checkpoint.load_model(dtype), tok


class _DropMissingMetadataWarning(logging.Filter):
  """Orbax warns on every restore of an item folder, which never holds _CHECKPOINT_METADATA (its
  step folder does); only that one message is dropped, other absl warnings still show."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Metadata file does not exist")


ABSL_FILTER = _DropMissingMetadataWarning()


def quiet_orbax_metadata_warning() -> None:
  """Installs the filter on absl's logger (idempotent): call where a checkpoint is read."""
  absl_logger = logging.getLogger("absl")
  if ABSL_FILTER not in absl_logger.filters:
    absl_logger.addFilter(ABSL_FILTER)


def _restore_params(params_dir, cfg: ModelConfig) -> dict:
  """The pure params in an Orbax item folder (`params`, or a trainer `state`), shapes checked first."""
  quiet_orbax_metadata_warning()
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
    {k: tuple(v.shape) for k, v in flatten_params(expected).items()},
    {k: tuple(v.shape) for k, v in flatten_params(found).items()},
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
  return jax.tree.map(np.asarray, restored["params"] if nested else restored)


def save_params(out_dir, cfg: ModelConfig, pure_params: dict) -> None:
  """Writes out_dir/params (Orbax) and out_dir/model_config.json into a new (or empty) folder."""
  check_shapes(param_shapes(cfg), {k: np.shape(v) for k, v in flatten_params(pure_params).items()}, "phi1_jax params")
  out_dir = hf.make_out_dir(out_dir)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(out_dir.absolute() / "params", pure_params)
  checkpointer.wait_until_finished()
  (out_dir / "model_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")


# ---------------------------------------------------------------- the converter


def hf_to_orbax(hf_dir, out_dir) -> ModelConfig:
  """The hf-to-orbax command: validates everything, then writes out_dir."""
  hf.check_out_dir(out_dir)
  cfg, params = hf.hf_to_params(*hf.read_hf_dir(hf_dir))
  tokenizer = paths.as_path(hf_dir) / "tokenizer.json"  # kept beside the params, where eval and sample look
  if tokenizer.is_file():
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
  hf.check_out_dir(out_dir)
  checkpoint = resolve(ckpt)
  cfg, params = checkpoint.load_params()
  hf_config, tensors = hf.params_to_hf(cfg, params)
  tokenizer = hf_tokenizer_files(checkpoint, cfg, log)
  if tokenizer and tokenizer["eos_id"] != hf_config["eos_token_id"]:
    log(
      f"note: the tokenizer's {EOS_TOKEN} is id {tokenizer['eos_id']}, model_config.json's eos_id "
      f"{cfg.eos_id}; config.json takes the tokenizer's"
    )
    hf_config.update(bos_token_id=tokenizer["eos_id"], eos_token_id=tokenizer["eos_id"])
  hf.write_hf_dir(out_dir, hf_config, tensors)
  for name, text in (tokenizer or {}).get("files", {}).items():
    (Path(out_dir) / name).write_text(text)
  return cfg


def hf_tokenizer_files(checkpoint: Checkpoint, cfg: ModelConfig, log) -> dict | None:
  """tokenizer.json + tokenizer_config.json for `AutoTokenizer`, from the tokenizer kept with the
  checkpoint (a tokenizer.json as it is; a train_tokenizer SentencePiece model converted, same ids);
  None, after one line saying why, when there is none or it cannot be converted."""
  path = checkpoint.tokenizer
  if path is None:
    log(f"note: no tokenizer.model or tokenizer.json kept with {checkpoint.path}; exported the model only")
    return None
  try:
    if path.suffix == ".json":
      eos_id, text = load_tokenizer(path).eos_id, path.read_text()
    else:
      hf_tokenizer = spm_as_hf_tokenizer(path)
      eos_id, text = hf_tokenizer.token_to_id(EOS_TOKEN), hf_tokenizer.to_str()
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
