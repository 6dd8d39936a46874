"""phi1_jax computes what transformers' PhiForCausalLM computes, through the converter both ways.

Each case: a randomly initialised PhiForCausalLM -> save_pretrained -> hf-to-orbax -> load ->
logits against transformers'; then orbax-to-hf -> from_pretrained (no missing/unexpected keys)
-> same logits, and the exported tensors equal the originals bit for bit.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phi1_jax.model import checkpoint
from phi1_jax.model import hf as convert
from phi1_jax.model.phi import model_from_params

TOL = 1e-4  # max |logits difference| in float32

# name: (PhiConfig kwargs, save_pretrained kwargs, rewrite config.json in the released phi-1 layout)
CASES = {
  # head_dim 10, rotary fraction 0.4 -> 4 rotary dims; 5 heads; sharded safetensors
  "rot0.4_heads5_sharded": (
    dict(
      vocab_size=97,
      hidden_size=50,
      intermediate_size=72,
      num_hidden_layers=2,
      num_attention_heads=5,
      partial_rotary_factor=0.4,
    ),
    dict(max_shard_size="20KB"),
    False,
  ),
  # 3 heads of 16, fraction 0.75, theta 500, config.json as transformers 4 wrote it (microsoft/phi-1)
  "rot0.75_heads3_oldconfig": (
    dict(
      vocab_size=61,
      hidden_size=48,
      intermediate_size=40,
      num_hidden_layers=3,
      num_attention_heads=3,
      partial_rotary_factor=0.75,
      rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.75},
    ),
    {},
    True,
  ),
  # phi-1's shape in miniature (fraction 0.5), saved in bfloat16
  "rot0.5_heads4_bf16": (
    dict(
      vocab_size=83,
      hidden_size=32,
      intermediate_size=128,
      num_hidden_layers=2,
      num_attention_heads=4,
      partial_rotary_factor=0.5,
    ),
    dict(dtype="bfloat16"),  # a torch dtype's name
    False,
  ),
}


def _old_layout(config_json: dict) -> dict:
  """The released microsoft/phi-1 layout: rope settings top level, num_key_value_heads null."""
  old = {k: v for k, v in config_json.items() if k not in ("rope_parameters", "dtype")}
  old.update(
    rope_theta=config_json["rope_parameters"]["rope_theta"],
    partial_rotary_factor=config_json["rope_parameters"]["partial_rotary_factor"],
    rope_scaling=None,
    num_key_value_heads=None,
    torch_dtype="float32",
    transformers_version="4.37.0",
  )
  return old


@nnx.jit
def _logits(model, tokens_BxL):
  return model(tokens_BxL)  # one compile instead of many eager ones


def _hf_logits(model, tokens_BxL):
  import torch

  with torch.no_grad():
    return model(torch.tensor(tokens_BxL)).logits.float().numpy()


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
  """A saved random HF checkpoint, the float32 reference model, its original tensors and tokens."""
  import torch  # here, not at the top: an xdist worker that runs no parity test does not import it
  import transformers

  hf_kwargs, save_kwargs, old_config = CASES[request.param]
  torch.manual_seed(sorted(CASES).index(request.param))
  hf_cfg = transformers.PhiConfig(max_position_embeddings=64, **hf_kwargs)
  model = transformers.PhiForCausalLM(hf_cfg).eval()
  for p in model.parameters():
    torch.nn.init.normal_(p, std=0.2)  # large enough that the logits are not trivially tiny
  save_kwargs = dict(save_kwargs)
  dtype = getattr(torch, save_kwargs.pop("dtype", "float32"))
  model = model.to(dtype)
  hf_dir = tmp_path_factory.mktemp(request.param) / "hf"
  model.save_pretrained(hf_dir, **save_kwargs)
  if old_config:
    config_path = hf_dir / "config.json"
    config_path.write_text(json.dumps(_old_layout(json.loads(config_path.read_text()))))
  # The reference is transformers' own float32 reading of the saved (possibly bf16) files.
  reference = transformers.PhiForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  original = {k: v.numpy() for k, v in reference.state_dict().items()}
  tokens_BxL = np.random.RandomState(0).randint(0, hf_cfg.vocab_size, (3, 21))
  return dict(
    name=request.param, hf_dir=hf_dir, reference=reference, original=original, tokens=tokens_BxL, tmp=hf_dir.parent
  )


def test_case_is_what_it_claims(case):
  hf_kwargs, save_kwargs, _ = CASES[case["name"]]
  files = sorted(p.name for p in case["hf_dir"].glob("*.safetensors"))
  if "max_shard_size" in save_kwargs:
    assert len(files) > 1 and (case["hf_dir"] / "model.safetensors.index.json").is_file()
  if "dtype" in save_kwargs:
    _, tensors = convert.read_hf_dir(case["hf_dir"])  # bf16 files, upcast on read
    assert all(t.dtype == np.float32 for t in tensors.values())
    assert json.loads((case["hf_dir"] / "config.json").read_text())["dtype"] == "bfloat16"


def test_hf_to_orbax_logits_match_transformers(case):
  """Also checks that the HF folder itself loads to the same parameters (no second compile needed)."""
  ckpt = case["tmp"] / "orbax"
  cfg = checkpoint.hf_to_orbax(case["hf_dir"], ckpt)
  head_dim = case["reference"].config.hidden_size // case["reference"].config.num_attention_heads
  assert cfg.rotary_dim == int(case["reference"].config.rope_parameters["partial_rotary_factor"] * head_dim)
  loaded_cfg, params = checkpoint.load_params(ckpt)
  assert loaded_cfg == cfg
  model = model_from_params(cfg, params)
  ours = np.asarray(_logits(model, jnp.asarray(case["tokens"])))
  ref = _hf_logits(case["reference"], case["tokens"])
  diff = np.abs(ours - ref).max()
  print(f"{case['name']}: max |logits diff| {diff:.2e}, max |logits| {np.abs(ref).max():.1f}")
  assert np.abs(ref).max() > 1.0
  assert diff <= TOL
  hf_cfg, hf_params = checkpoint.load_params(case["hf_dir"])
  assert hf_cfg == cfg
  for a, b in zip(jax.tree.leaves(hf_params), jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))):
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_orbax_to_hf_loads_in_transformers_bit_exact(case):
  import torch
  import transformers

  ckpt = case["tmp"] / "orbax_for_export"
  checkpoint.hf_to_orbax(case["hf_dir"], ckpt)
  out = case["tmp"] / "exported"
  checkpoint.orbax_to_hf(ckpt, out)
  exported, info = transformers.PhiForCausalLM.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  exported.eval()
  assert exported.dtype == torch.float32
  diff = np.abs(_hf_logits(exported, case["tokens"]) - _hf_logits(case["reference"], case["tokens"])).max()
  print(f"{case['name']}: exported max |logits diff| {diff:.2e}")
  assert diff <= TOL
  # HF -> Orbax -> HF: every tensor equal to the original (bf16 originals upcast), bit for bit.
  _, tensors = convert.read_hf_dir(out)
  assert set(tensors) == set(case["original"])
  for name, original in case["original"].items():
    assert tensors[name].dtype == np.float32
    assert np.array_equal(tensors[name], original), name
