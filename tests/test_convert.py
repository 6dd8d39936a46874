"""The converter's contract: clear one-line refusals, nothing written on failure, checkpoint discovery."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy

from phi1_jax import convert as convert_cli
from phi1_jax.model import checkpoint
from phi1_jax.model import hf as convert
from phi1_jax.model.phi import ModelConfig
from helpers import repo_env


# config.json of the released microsoft/phi-1 (written by transformers 4.37).
RELEASED_PHI1_CONFIG = {
  "_name_or_path": "microsoft/phi-1",
  "architectures": ["PhiForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": None,
  "embd_pdrop": 0.0,
  "eos_token_id": None,
  "hidden_act": "gelu_new",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 2048,
  "model_type": "phi",
  "num_attention_heads": 32,
  "num_hidden_layers": 24,
  "num_key_value_heads": None,
  "partial_rotary_factor": 0.5,
  "qk_layernorm": False,
  "resid_pdrop": 0.0,
  "rope_scaling": None,
  "rope_theta": 10000.0,
  "tie_word_embeddings": False,
  "torch_dtype": "float32",
  "transformers_version": "4.37.0",
  "use_cache": True,
  "vocab_size": 51200,
}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny transformers PhiForCausalLM saved with save_pretrained."""
  import torch  # here, not at the top: an xdist worker that runs no convert test does not import it
  import transformers

  torch.manual_seed(0)
  cfg = transformers.PhiConfig(
    vocab_size=37,
    hidden_size=24,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=3,
    max_position_embeddings=32,
  )
  path = tmp_path_factory.mktemp("hf") / "tiny"
  transformers.PhiForCausalLM(cfg).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def hf_files(hf_dir):
  return convert.read_hf_dir(hf_dir)


def _one_line_error(fn, *args):
  with pytest.raises(ValueError) as info:
    fn(*args)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_released_phi1_config_is_phi1():
  cfg = convert.hf_config_to_model_config(RELEASED_PHI1_CONFIG)
  assert cfg == ModelConfig()  # the defaults are phi-1
  assert cfg.rotary_dim == 32 and cfg.attn_dropout == cfg.resid_dropout == cfg.embd_dropout == 0.0


def test_exported_config_reads_back_and_in_transformers():
  cfg = ModelConfig(
    vocab_size=51,
    d_model=20,
    n_layers=1,
    n_heads=2,
    head_dim=10,
    mlp_dim=8,
    rotary_dim=6,
    rope_theta=500.0,
    resid_dropout=0.1,
    attn_dropout=0.1,
    embd_dropout=0.1,
  )
  import transformers

  hf = convert.model_config_to_hf_config(cfg)
  assert convert.hf_config_to_model_config(hf) == cfg
  hf_cfg = transformers.PhiConfig(**hf)
  assert int(hf_cfg.rope_parameters["partial_rotary_factor"] * 10) == 6
  assert hf_cfg.rope_parameters["rope_theta"] == 500.0 and hf_cfg.resid_pdrop == 0.1


@pytest.mark.parametrize(
  "change, named",
  [
    ({"qk_layernorm": True}, "qk_layernorm"),
    ({"num_key_value_heads": 8}, "num_key_value_heads"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"hidden_size": None}, "hidden_size"),
  ],
)
def test_unrepresentable_configs_are_refused(change, named):
  message = _one_line_error(convert.hf_config_to_model_config, {**RELEASED_PHI1_CONFIG, **change})
  assert named in message


def test_missing_tensor_names_it_and_both_shapes(hf_files):
  config_json, tensors = hf_files
  tensors = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.fc1.weight"}
  message = _one_line_error(convert.hf_to_params, config_json, tensors)
  assert "model.layers.1.mlp.fc1.weight" in message and "(32, 24)" in message and "none" in message


def test_extra_tensor_names_it_and_both_shapes(hf_files):
  config_json, tensors = hf_files
  tensors = {**tensors, "model.layers.0.mlp.fc3.weight": np.zeros((5, 7), np.float32)}
  message = _one_line_error(convert.hf_to_params, config_json, tensors)
  assert "model.layers.0.mlp.fc3.weight" in message and "(5, 7)" in message and "none" in message


def test_wrong_shape_names_it_and_both_shapes(hf_files):
  config_json, tensors = hf_files
  tensors = {**tensors, "lm_head.weight": np.zeros((38, 24), np.float32)}
  message = _one_line_error(convert.hf_to_params, config_json, tensors)
  assert "lm_head.weight" in message and "(37, 24)" in message and "(38, 24)" in message


def test_cli_refuses_bad_checkpoint_and_writes_nothing(hf_files, tmp_path):
  """A real subprocess: exit code 2, one line on stderr, no output folder."""
  config_json, tensors = hf_files
  bad = tmp_path / "bad_hf"
  bad.mkdir()
  (bad / "config.json").write_text(json.dumps(config_json))
  tensors = {**tensors, "model.layers.0.self_attn.q_proj.weight": np.zeros((24, 25), np.float32)}
  safetensors.numpy.save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
  out = tmp_path / "out"
  env = repo_env(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(
    [sys.executable, "-m", "phi1_jax.convert", "hf-to-orbax", "--hf_dir", str(bad), "--out", str(out)],
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
  )
  assert proc.returncode == 2, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr
  assert "model.layers.0.self_attn.q_proj.weight" in lines[0]
  assert "(24, 24)" in lines[0] and "(24, 25)" in lines[0]
  assert not out.exists()


def test_cli_flags_are_checked_by_argparse(capsys):
  for argv in (["hf-to-orbax", "--out", "x"], ["orbax-to-hf", "--checkpoint", "x"], ["to-gguf"], []):
    with pytest.raises(SystemExit) as info:
      convert_cli.main(argv)
    assert info.value.code == 2


def test_non_empty_out_is_refused_empty_out_is_used(hf_dir, tmp_path):
  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "notes.txt").write_text("mine")
  assert convert_cli.main(["hf-to-orbax", "--hf_dir", str(hf_dir), "--out", str(taken)]) == 2
  assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]
  empty = tmp_path / "empty"
  empty.mkdir()
  assert convert_cli.main(["hf-to-orbax", "--hf_dir", str(hf_dir), "--out", str(empty)]) == 0
  assert sorted(p.name for p in empty.iterdir()) == ["model_config.json", "params"]


def test_orbax_shape_mismatch_is_refused_before_writing(hf_dir, tmp_path):
  ckpt = tmp_path / "ckpt"
  cfg = checkpoint.hf_to_orbax(hf_dir, ckpt)
  # A model_config.json that no longer matches the stored arrays.
  (ckpt / "model_config.json").write_text(json.dumps(dataclasses.asdict(dataclasses.replace(cfg, vocab_size=40))))
  out = tmp_path / "hf_out"
  message = _one_line_error(checkpoint.orbax_to_hf, ckpt, out)
  assert "embed" in message and "(40, 24)" in message and "(37, 24)" in message
  assert not out.exists()


def test_params_to_hf_checks_the_pure_dict(hf_files):
  cfg, params = convert.hf_to_params(*hf_files)
  params["blocks"] = {k: v for k, v in params["blocks"].items() if k != "o_bias"}
  message = _one_line_error(convert.params_to_hf, cfg, params)
  assert "blocks/o_bias" in message and "(2, 24)" in message


@pytest.mark.parametrize("item", ["params", "state"])
def test_trainer_checkpoints_are_found_and_exported(hf_files, tmp_path, item):
  """Trainer layout: WORKDIR/model_config.json + WORKDIR/checkpoints/<step>/<item> (Orbax composite).

  The item is the pure params dict, or a train state {"params", "opt_state", "step"}.
  """
  cfg, params = convert.hf_to_params(*hf_files)
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  (workdir / "model_config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
  manager = ocp.CheckpointManager(workdir / "checkpoints", item_names=(item,))
  for step, scale in ((3, 0.0), (12, 1.0)):
    scaled = {
      "blocks": {k: v * scale for k, v in params["blocks"].items()},
      **{k: v * scale for k, v in params.items() if k != "blocks"},
    }
    if item == "state":
      scaled = {"params": scaled, "opt_state": {"mu": scaled["blocks"]}, "step": np.int32(step)}
    manager.save(step, args=ocp.args.Composite(**{item: ocp.args.StandardSave(scaled)}))
  manager.wait_until_finished()
  manager.close()

  found = checkpoint.resolve(workdir)
  assert found.weights == workdir / "checkpoints" / "12" / item and found.config == workdir / "model_config.json"
  assert checkpoint.resolve(workdir / "checkpoints" / "3").weights == workdir / "checkpoints" / "3" / item
  _, step3 = checkpoint.load_params(workdir / "checkpoints" / "3")
  assert not np.any(step3["embed"])

  out = tmp_path / "exported"
  # the flag's old name, --ckpt, still works (hidden from --help)
  assert convert_cli.main(["orbax-to-hf", "--ckpt", str(workdir), "--out", str(out)]) == 0
  _, exported = convert.read_hf_dir(out)
  _, original = hf_files
  assert set(exported) == set(original)
  assert all(np.array_equal(exported[k], original[k]) for k in original)


def test_resolve_refuses_other_folders(tmp_path):
  message = _one_line_error(checkpoint.resolve, tmp_path)
  assert str(tmp_path) in message and "not a checkpoint" in message
  (tmp_path / "params").mkdir()
  message = _one_line_error(checkpoint.resolve, tmp_path)
  assert "model_config.json" in message


def test_resolve_tells_the_kinds_apart_by_one_rule(trainer_workdir, tmp_path):
  """config.json alone is a Hugging Face folder; a trainer workdir (config.json beside
  model_config.json) is not; the tokenizer kept with a step folder is its workdir's."""
  hf_like = tmp_path / "hf"
  hf_like.mkdir()
  (hf_like / "config.json").write_text("{}")
  found = checkpoint.resolve(hf_like)
  assert (found.kind, found.weights, found.tokenizer) == ("hf", hf_like, None)
  assert "no *.safetensors files" in _one_line_error(found.load_params)
  assert "pass --tokenizer" in _one_line_error(found.tokenizer_file)
  (hf_like / "model_config.json").write_text("{}")  # a trainer workdir before its first checkpoint
  assert "not a checkpoint" in _one_line_error(checkpoint.resolve, hf_like)
  step = checkpoint.resolve(trainer_workdir / "checkpoints" / "5")
  assert step.kind == "phi1_jax" and step.tokenizer == trainer_workdir / "tokenizer.json"
  assert step.config == trainer_workdir / "model_config.json"
  missing = tmp_path / "nope"
  assert _one_line_error(checkpoint.resolve, missing, "--checkpoint") == f"--checkpoint={missing}: not found"


def test_load_params_also_reads_a_transformers_folder(hf_dir, hf_files):
  cfg, params = checkpoint.load_params(hf_dir)
  expected_cfg, expected = convert.hf_to_params(*hf_files)
  assert cfg == expected_cfg
  assert all(np.array_equal(params["blocks"][k], v) for k, v in expected["blocks"].items())


@pytest.fixture(scope="module")
def trainer_workdir(tmp_path_factory):
  """A trainer workdir as train.py leaves it: model_config.json, checkpoints/<step>/state, tokenizer.json."""
  from flax import nnx
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  from phi1_jax.data.tokenizer import EOS_TOKEN
  from phi1_jax.model.phi import Phi

  cfg = ModelConfig(
    vocab_size=512, d_model=32, n_layers=2, n_heads=4, head_dim=8, mlp_dim=64, rotary_dim=4, max_seq_len=64, eos_id=0
  )
  workdir = tmp_path_factory.mktemp("run") / "workdir"
  workdir.mkdir()
  (workdir / "model_config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
  params = nnx.to_pure_dict(nnx.state(Phi(cfg, rngs=nnx.Rngs(0)), nnx.Param))
  state = {"params": params, "opt_state": {"mu": params["blocks"]}, "step": np.int32(5)}
  with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state",)) as manager:
    manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  hf = Tokenizer(models.BPE())  # a byte-level BPE, as phi-1's CodeGen tokenizer
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=400, special_tokens=[EOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
  )
  hf.train_from_iterator([Path(json.__file__).read_text()] * 2, trainer)
  hf.save(str(workdir / "tokenizer.json"))
  return workdir


def _convert_cli(*args, umask=0o022):
  env = repo_env(JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "phi1_jax.convert", *map(str, args)],
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
    umask=umask,
  )


# Run with HF_HUB_OFFLINE=1 in a fresh process, as a user loading the export would.
_LOAD_EXPORT = """
import json, sys
from transformers import AutoTokenizer, pipeline
from phi1_jax.data.tokenizer import load_tokenizer
out, original, text = sys.argv[1], sys.argv[2], sys.argv[3]
hf, ours = AutoTokenizer.from_pretrained(out), load_tokenizer(original)
ids = hf(text)["input_ids"]
generate = pipeline("text-generation", model=out)
generated = generate("def f(x):", max_new_tokens=4, do_sample=False)[0]["generated_text"]
print(json.dumps({"same_ids": ids == ours.encode(text), "round_trip": hf.decode(ids) == text,
                  "eos": [hf.eos_token, hf.eos_token_id, ours.eos_id, generate.model.config.eos_token_id],
                  "generated": generated.startswith("def f(x):")}))
"""
_AWKWARD = "def f(x):\n\treturn x  # é 🙂\r\n\n    <|endoftext|>class A: pass\n"


def _load_export(out, original):
  env = repo_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
  proc = subprocess.run(
    [sys.executable, "-c", _LOAD_EXPORT, str(out), str(original), _AWKWARD],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_export_of_a_trainer_workdir_is_quiet_and_readable(trainer_workdir, tmp_path):
  """No Orbax 'Metadata file does not exist' warning; files get the umask's mode, as any new file."""
  out = tmp_path / "hf"
  proc = _convert_cli("orbax-to-hf", "--checkpoint", trainer_workdir, "--out", out)
  assert proc.returncode == 0, proc.stderr
  assert "Metadata file does not exist" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
  assert [(out / name).stat().st_mode & 0o777 for name in ("config.json", "model.safetensors")] == [0o644, 0o644]
  # The export carries the workdir's Hugging Face tokenizer: AutoTokenizer and pipeline load the folder.
  assert "with its tokenizer" in proc.stdout
  assert (out / "tokenizer.json").read_text() == (trainer_workdir / "tokenizer.json").read_text()
  loaded = _load_export(out, trainer_workdir / "tokenizer.json")
  assert loaded == {"same_ids": True, "round_trip": True, "eos": ["<|endoftext|>", 0, 0, 0], "generated": True}


def test_exported_weights_follow_a_strict_umask(tmp_path):
  old = os.umask(0o077)
  try:
    convert.write_hf_dir(tmp_path / "private", {"model_type": "phi"}, {"x": np.zeros(2, np.float32)})
  finally:
    os.umask(old)
  assert [(tmp_path / "private" / n).stat().st_mode & 0o777 for n in ("config.json", "model.safetensors")] == [
    0o600,
    0o600,
  ]


def test_the_metadata_filter_drops_only_that_warning(caplog):
  import logging

  checkpoint.quiet_orbax_metadata_warning()
  checkpoint.quiet_orbax_metadata_warning()  # idempotent
  absl_logger = logging.getLogger("absl")
  assert absl_logger.filters.count(checkpoint.ABSL_FILTER) == 1
  with caplog.at_level(logging.WARNING, logger="absl"):
    absl_logger.warning("Metadata file does not exist: %s", "/x/_CHECKPOINT_METADATA")
    absl_logger.warning("something else")
  assert [r.getMessage() for r in caplog.records] == ["something else"]


@pytest.mark.slow
def test_export_converts_the_trainers_sentencepiece_tokenizer(trainer_workdir, tmp_path):
  from phi1_jax.data.tokenizer import train_tokenizer

  workdir = tmp_path / "spm_run"
  shutil.copytree(trainer_workdir, workdir, ignore=shutil.ignore_patterns("tokenizer.json"))
  train_tokenizer([Path(json.__file__).parent], 400, tmp_path / "tok")
  shutil.copy(tmp_path / "tok" / "tokenizer.model", workdir / "tokenizer.model")  # as train.py keeps it
  out = tmp_path / "hf"
  proc = _convert_cli("orbax-to-hf", "--checkpoint", workdir / "checkpoints" / "5", "--out", out)
  assert proc.returncode == 0 and "with its tokenizer" in proc.stdout, proc.stderr
  loaded = _load_export(out, workdir / "tokenizer.model")
  assert loaded == {"same_ids": True, "round_trip": True, "eos": ["<|endoftext|>", 0, 0, 0], "generated": True}


def test_export_says_why_a_foreign_sentencepiece_model_is_not_exported(trainer_workdir, tmp_path):
  import io

  import sentencepiece as spm

  workdir = tmp_path / "foreign"
  shutil.copytree(trainer_workdir, workdir, ignore=shutil.ignore_patterns("tokenizer.json"))
  model = io.BytesIO()  # SentencePiece's defaults: a dummy prefix and NFKC, which the conversion does not reproduce
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(Path(json.__file__).read_text().splitlines()),
    model_writer=model,
    vocab_size=400,
    model_type="bpe",
    byte_fallback=True,
    user_defined_symbols=["<|endoftext|>"],
    minloglevel=2,
  )
  (workdir / "tokenizer.model").write_bytes(model.getvalue())
  out = tmp_path / "hf"
  proc = _convert_cli("orbax-to-hf", "--checkpoint", workdir, "--out", out)
  assert proc.returncode == 0, proc.stderr
  notes = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(notes) == 1 and "tokenizer not exported" in notes[0] and "no dummy prefix" in notes[0], proc.stderr
  assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
