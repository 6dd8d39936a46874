"""Sharded training equals one device: the trainer's state creation and step on 8 simulated CPU
devices under several meshes, against a single-device run (a subprocess, so XLA_FLAGS applies).
The fast tier runs one mesh that uses all three axes; the other meshes are slow."""

import json
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO, repo_env


# Runs in a fresh interpreter with 8 host devices, for the meshes in argv[1] (JSON); prints one JSON line.
SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from ml_collections import config_dict
    from phi1_jax.model import sharding
    from phi1_jax.train.state import create_state, state_shardings
    from phi1_jax.train.step import jit_train_step
    sys.path.insert(0, "configs")
    import tiny

    config = tiny.get_config()
    config.model.n_layers = 2
    config.batch_size, config.grad_accum_steps, config.seq_len = 16, 2, 32
    config.optimizer.warmup_steps = 1  # full learning rate from step 2: differences would show
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, config.model.vocab_size, (2, 8, 33), dtype=np.int32) for _ in range(3)]

    def run(mesh_sizes, devices):
      config.mesh = config_dict.ConfigDict(dict(zip(("data", "fsdp", "tensor"), mesh_sizes)))
      mesh = sharding.make_mesh(config.mesh, devices)
      graphdef, _, state_shard, tx, _ = state_shardings(config, mesh)
      state = create_state(config, tx, state_shard)
      step = jit_train_step(graphdef, tx, config, mesh, state_shard)
      losses = []
      for tokens in batches:
        state, metrics = step(state, sharding.global_batch(tokens, mesh, leading_dims=1))
        losses.append(float(metrics["loss"]))
      blocks = state["params"]["blocks"]
      specs = {name: [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec]
               for name, x in [("embed", state["params"]["embed"]), ("lm_head_kernel", state["params"]["lm_head_kernel"]),
                               ("q_kernel", blocks["q_kernel"]), ("o_kernel", blocks["o_kernel"]),
                               ("fc1_kernel", blocks["fc1_kernel"]), ("fc2_bias", blocks["fc2_bias"])]}
      mu = state["opt_state"][1][0].mu["blocks"]["fc1_kernel"]  # clip, then adamw's scale_by_adam
      specs["mu_fc1_kernel"] = [list(a) if isinstance(a, tuple) else a for a in mu.sharding.spec]
      params = jax.tree.map(np.asarray, jax.device_get(state["params"]))
      return losses, params, specs

    ref_losses, ref_params, _ = run((1, 1, 1), jax.devices()[:1])
    out = {"ref_losses": ref_losses}
    for sizes in map(tuple, json.loads(sys.argv[1])):
      losses, params, specs = run(sizes, jax.devices())
      err = jax.tree.map(lambda a, b: float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)), params, ref_params)
      err = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(err)}
      out[str(sizes)] = {"losses": losses, "param_rel_err": err, "specs": specs}
    print("RESULT " + json.dumps(out))
""")

# What config.sharding_rules say (vocab->tensor, embed->fsdp, heads->tensor, mlp->tensor, layers and
# head_dim whole), with axes of size 1 dropped.
EXPECTED_SPECS = {
  "(8, 1, 1)": {
    "embed": [None, None],
    "lm_head_kernel": [None, None],
    "q_kernel": [None, None, None, None],
    "o_kernel": [None, None, None, None],
    "fc1_kernel": [None, None, None],
    "fc2_bias": [None, None],
    "mu_fc1_kernel": [None, None, None],
  },
  "(1, 8, 1)": {
    "embed": [None, "fsdp"],
    "lm_head_kernel": ["fsdp", None],
    "q_kernel": [None, "fsdp", None, None],
    "o_kernel": [None, None, None, "fsdp"],
    "fc1_kernel": [None, "fsdp", None],
    "fc2_bias": [None, "fsdp"],
    "mu_fc1_kernel": [None, "fsdp", None],
  },
  "(2, 2, 2)": {
    "embed": ["tensor", "fsdp"],
    "lm_head_kernel": ["fsdp", "tensor"],
    "q_kernel": [None, "fsdp", "tensor", None],
    "o_kernel": [None, "tensor", None, "fsdp"],
    "fc1_kernel": [None, "fsdp", "tensor"],
    "fc2_bias": [None, "fsdp"],
    "mu_fc1_kernel": [None, "fsdp", "tensor"],
  },
}
EXPECTED_SPECS["(1, 2, 4)"] = EXPECTED_SPECS["(2, 2, 2)"]


def _sharded_runs(meshes: list[str]) -> dict:
  """Losses, parameter errors and shardings of 3 steps on each mesh ("(data, fsdp, tensor)") and on one device."""
  sizes = json.dumps([[int(n) for n in mesh.strip("()").split(",")] for mesh in meshes])
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT, sizes],
    cwd=REPO,
    env=repo_env(devices=8),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT ") :])


def _assert_matches_one_device_and_rules(results, mesh):
  got, ref = results[mesh], results["ref_losses"]
  for a, b in zip(got["losses"], ref, strict=True):
    assert abs(a - b) <= 1e-5 * abs(b), (mesh, got["losses"], ref)
  # k_bias's gradient is float noise: a bias on the keys (outside the rotary dims) adds one
  # constant to a query's logits, which softmax ignores, and Adam scales that noise up to +-lr.
  err = {k: v for k, v in got["param_rel_err"].items() if "k_bias" not in k}
  assert max(err.values()) <= 1e-5, (mesh, got["param_rel_err"])
  assert got["specs"] == EXPECTED_SPECS[mesh]


FAST_MESH = "(2, 2, 2)"  # data, fsdp and tensor at once
SLOW_MESHES = [mesh for mesh in EXPECTED_SPECS if mesh != FAST_MESH]


def test_a_mesh_of_all_three_axes_matches_one_device_and_follows_the_rules():
  _assert_matches_one_device_and_rules(_sharded_runs([FAST_MESH]), FAST_MESH)


@pytest.fixture(scope="module")
def slow_results():
  return _sharded_runs(SLOW_MESHES)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", SLOW_MESHES)
def test_mesh_matches_one_device_and_follows_the_rules(slow_results, mesh):
  _assert_matches_one_device_and_rules(slow_results, mesh)
