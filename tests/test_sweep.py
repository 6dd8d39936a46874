"""python -m phi1_jax.sweep: specs checked before anything runs, a sweep killed with SIGKILL and rerun
ends with the metrics of uninterrupted runs, the report on a partial and a full sweep."""

import csv
import shutil
import signal
import subprocess
import sys

import pytest

from helpers import REPO, repo_env, run_module, wait_for
from phi1_jax.sweep import spec as spec_lib
from phi1_jax.sweep import trials as trial_lib
from phi1_jax.sweep.__main__ import main as sweep_main

# 20-step runs of a 2-layer, 64-wide model; checkpoints every 5 steps so a killed trial resumes.
SMALL = [
  "model.d_model=64",
  "model.n_layers=2",
  "model.n_heads=2",
  "model.mlp_dim=128",
  "batch_size=4",
  "total_steps=20",
  "checkpoint_every=5",
  "eval_every=10",
  "eval_batches=2",
  "log_every=1",
]


def sweep_args(root, cache, *extra):
  return [
    "--config=configs/tiny.py",
    f"--root={root}",
    f"--set=data.cache_dir={cache}",
    *(f"--set={s}" for s in SMALL),
    *extra,
  ]


def call(capsys, *argv):
  """The CLI in this process: (exit code, stderr lines)."""
  rc = sweep_main(list(argv))
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  return rc, err


@pytest.mark.parametrize(
  "specs, message",
  [
    (
      ["--grid=optimizer.lrr=1e-3,3e-3"],
      "unknown config key 'optimizer.lrr' in config.optimizer (did you mean 'optimizer.lr'?)",
    ),
    (
      ["--grid=optimizer.lr=1e-3,fast"],
      "--grid optimizer.lr: value 'fast': flag --config.optimizer.lr=fast: could not convert",
    ),
    (["--grid=total_steps=10,2.5"], "value '2.5'"),
    (["--grid=optimizer"], "want KEY=V1,V2"),
    (["--grid=optimizer=1,2"], "'optimizer' is a group of fields"),
    (["--grid=seed=1,1"], "a value is repeated"),
    (["--grid=seed=1,2", "--grid=config.seed=3,4"], "seed is also given by --grid seed"),
    (["--random=2", "--space=optimizer.lr=loguniform(0,1e-2)"], "loguniform bounds must be positive"),
    (["--random=2", "--space=optimizer.lr=gaussian(0,1)"], "unknown distribution 'gaussian'"),
    (["--random=2", "--space=optimizer.lr=uniform(1e-2,1e-4)"], "LOW must be below HIGH"),
    (["--random=2", "--space=optimizer.warmup_steps=randint(1.5,3)"], "bounds must be integers"),
    (["--random=2", "--space=data.mixture=uniform(0,1)"], "data.mixture is a str; use choice"),
    (["--random=2", "--space=total_steps=choice(10,ten)"], "value 'ten'"),
    (["--space=optimizer.lr=loguniform(1e-4,1e-2)"], "--space needs --random=N"),
    ([], "nothing to sweep"),
    # the trainer's own checks of each whole config
    (
      ["--set=grad_accum_steps=4", "--grid=batch_size=16,6"],
      "trial 01_batch_size=6: batch_size=6 is not divisible by grad_accum_steps=4",
    ),
    (["--grid=data.mixture=stdlib|/nowhere/code:1,/nowhere/text:1"], "data path /nowhere/code does not exist"),
  ],
)
def test_bad_specs_end_in_one_line(tmp_path, capsys, specs, message):
  root = tmp_path / "sweep"
  rc, err = call(capsys, "--config=configs/tiny.py", f"--root={root}", *specs)
  assert rc == 2
  assert len(err) == 1 and err[0].startswith("python -m phi1_jax.sweep: error: ") and message in err[0], err
  assert not root.exists()


def test_bad_spec_from_the_command_line(tmp_path):
  out = run_module("phi1_jax.sweep", "--config=configs/tiny.py", f"--root={tmp_path}/s", "--grid=optimizer.lr=1e-3,x")
  assert out.returncode == 2 and out.stderr.strip() == (
    "python -m phi1_jax.sweep: error: --grid optimizer.lr: value 'x': flag --config.optimizer.lr=x: could not convert string to float: 'x'"
  )
  out = run_module("phi1_jax.sweep", "report", f"--root={tmp_path}/s")
  assert (
    out.returncode == 2
    and out.stderr.strip()
    == f"python -m phi1_jax.sweep report: error: {tmp_path}/s/sweep.json does not exist: not a sweep root"
  )


def test_random_search_plan_is_seeded_named_and_in_bounds():
  specs = dict(
    grid=["seed=0,1"],
    space=[
      "optimizer.lr=loguniform(1e-4,1e-2)",
      "optimizer.warmup_steps=randint(0,50)",
      "model.attention_impl=choice(xla,auto)",
    ],
    random_count=3,
    seed=7,
    sets=[],
  )
  plan = spec_lib.make_plan("configs/tiny.py", **specs)
  assert plan == spec_lib.make_plan("configs/tiny.py", **specs)  # the same command, the same trials
  assert plan["swept"] == ["seed", "optimizer.lr", "optimizer.warmup_steps", "model.attention_impl"]
  trials = plan["trials"]
  assert len(trials) == 6 and [t["overrides"]["seed"] for t in trials] == [0, 1] * 3  # every draw meets the grid
  for t in trials:
    o = t["overrides"]
    assert 1e-4 <= o["optimizer.lr"] <= 1e-2 and float(f"{o['optimizer.lr']:.4g}") == o["optimizer.lr"]
    assert isinstance(o["optimizer.warmup_steps"], int) and 0 <= o["optimizer.warmup_steps"] <= 50
    assert t["name"] == (
      f"{trials.index(t):02d}_seed={o['seed']},lr={o['optimizer.lr']!r},"
      f"warmup_steps={o['optimizer.warmup_steps']},attention_impl={o['model.attention_impl']}"
    )
    assert f"--config.optimizer.lr={o['optimizer.lr']!r}" in t["args"]
  assert len({t["overrides"]["optimizer.lr"] for t in trials}) == 3
  other = spec_lib.make_plan("configs/tiny.py", **dict(specs, seed=8))
  assert [t["overrides"] for t in other["trials"]] != [t["overrides"] for t in trials]


def test_sweep_and_training_metrics_import_no_jax():
  # the sweep's driver and its reports use the trainer's duration format without paying for JAX
  code = (
    "import sys; import phi1_jax.sweep.local, phi1_jax.sweep.report, phi1_jax.train.metrics; "
    "print(sorted(m for m in ('jax', 'flax', 'phi1_jax.model.phi') if m in sys.modules))"
  )
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout
  from phi1_jax.train.metrics import duration

  assert (duration(185), duration(3725)) == ("3m05s", "1h02m")


def test_parallel_slots_get_their_own_gpus_or_a_share_of_one():
  from phi1_jax.sweep.local import slot_envs

  assert slot_envs(3, []) == [None] * 3  # CPU: the trials share the cores
  own = slot_envs(4, [str(i) for i in range(8)])
  assert [e["CUDA_VISIBLE_DEVICES"] for e in own] == ["0,1", "2,3", "4,5", "6,7"]
  assert all("XLA_PYTHON_CLIENT_MEM_FRACTION" not in e for e in own)
  shared = slot_envs(4, ["3", "5"])
  assert [(e["CUDA_VISIBLE_DEVICES"], e["XLA_PYTHON_CLIENT_MEM_FRACTION"]) for e in shared] == [
    ("3", "0.45"),
    ("5", "0.45"),
    ("3", "0.45"),
    ("5", "0.45"),
  ]


def _losses(wd):
  """step -> (loss, grad_norm, eval_loss), the report's reading of metrics.jsonl (the last row of a step wins)."""
  from phi1_jax.sweep.report import metric_rows

  return {r["step"]: (r["loss"], r["grad_norm"], r.get("eval_loss")) for r in metric_rows(wd)}


def _csv(root):
  with open(root / "report" / "results.csv") as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_sweep_killed_in_its_third_run_resumes_to_the_metrics_of_uninterrupted_runs(tmp_path, stdlib_cache, capsys):
  root = tmp_path / "sweep"
  args = sweep_args(root, stdlib_cache, "--grid=optimizer.lr=1e-3,3e-3", "--grid=optimizer.warmup_steps=0,5")
  env = repo_env()
  with open(tmp_path / "first.log", "w") as log:
    proc = subprocess.Popen(
      [sys.executable, "-m", "phi1_jax.sweep", *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    wait_for(lambda: (root / "sweep.json").exists(), 300, "the plan", poll=0.02)
    plan = spec_lib.read_plan(root)
    names = [t["name"] for t in plan["trials"]]
    assert names == [
      "00_lr=0.001,warmup_steps=0",
      "01_lr=0.001,warmup_steps=5",
      "02_lr=0.003,warmup_steps=0",
      "03_lr=0.003,warmup_steps=5",
    ]
    third = plan["trials"][2]
    try:
      wait_for(
        lambda: (root / names[2] / "checkpoints" / "5").is_dir() or proc.poll() is not None,
        1200,
        "a checkpoint of the third run",
        poll=0.02,
      )
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
  assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
  # The sweep's trainer gets SIGTERM when the sweep dies: it saves a checkpoint and lets go of the trial.
  wait_for(lambda: not trial_lib.is_running(root, third), 120, "the third run's trainer to stop", poll=0.02)
  assert trial_lib.status(root, third) == "partial"
  resume_step = trial_lib.checkpoint_steps(root / names[2])[-1]
  assert 5 <= resume_step < 20

  # The report of the half-finished sweep.
  out = run_module("phi1_jax.sweep", "report", f"--root={root}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "4 trials: 2 finished, 1 partial, 1 pending; sorted by final_eval_loss (min first)" in out.stdout
  rows = {r["name"]: r for r in _csv(root)}
  assert [rows[n]["status"] for n in names] == ["finished", "finished", "partial", "pending"]
  assert rows[names[3]]["final_eval_loss"] == "" and rows[names[3]]["step"] == "0"
  assert float(rows[names[0]]["final_eval_loss"]) > 0 and rows[names[0]]["tokens"] == str(20 * 4 * 128)
  for png in ("eval_loss.png", "final_eval_loss_vs_swept.png"):
    assert (root / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  # Rerun: finished trials skipped without starting a trainer, the third resumed from its checkpoint.
  out = run_module("phi1_jax.sweep", *args)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert f"skip {names[0]}: finished" in out.stdout and f"skip {names[1]}: finished" in out.stdout
  assert f"resume from step {resume_step} {names[2]} (attempt 2" in out.stdout
  assert (
    f"resumed from {root}/{names[2]}/checkpoints/{resume_step}"
    in (root / names[2] / "sweep" / "attempt-2.log").read_text()
  )
  assert [len(trial_lib.attempts(root, t)) for t in plan["trials"]] == [1, 1, 2, 1]
  assert all(trial_lib.status(root, t) == "finished" for t in plan["trials"])

  # Uninterrupted runs of the killed trial and of another, two at a time: the same metrics.
  straight = tmp_path / "straight"
  out = run_module(
    "phi1_jax.sweep",
    *sweep_args(
      straight, stdlib_cache, "--grid=optimizer.lr=1e-3,3e-3", "--set=optimizer.warmup_steps=0", "--parallel=2"
    ),
  )
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  for name, twin in ((names[2], "01_lr=0.003"), (names[0], "00_lr=0.001")):
    assert _losses(root / name) == _losses(straight / twin)
    assert sorted(_losses(root / name)) == list(range(1, 21))

  # The report of the whole sweep, sorted by final eval loss.
  out = run_module("phi1_jax.sweep", "report", f"--root={root}")
  assert out.returncode == 0, out.stderr[-3000:]
  rows = _csv(root)
  assert [r["status"] for r in rows] == ["finished"] * 4
  finals = [float(r["final_eval_loss"]) for r in rows]
  assert finals == sorted(finals)
  assert all(float(r["best_eval_loss"]) <= float(r["final_eval_loss"]) and float(r["wall_s"]) > 0 for r in rows)
  md = (root / "report" / "results.md").read_text()
  assert "| name | optimizer.lr | optimizer.warmup_steps | status |" in md and md.count("| finished |") == 4

  # The same root with other flags is refused, untouched.
  rc, err = call(
    capsys, *sweep_args(root, stdlib_cache, "--grid=optimizer.lr=1e-3,3e-3", "--grid=optimizer.warmup_steps=0,10")
  )
  assert rc == 2 and err == [
    f"python -m phi1_jax.sweep: error: {root}/sweep.json holds another sweep (other trials); rerun with its flags, or give a new --root"
  ]


def _slurm_node_up() -> str | None:
  """Why the SLURM test cannot run here, or None (a one-node cluster: launch/slurm_local_cluster.sh)."""
  if not (shutil.which("sbatch") and shutil.which("sinfo")):
    return "SLURM is not installed (as root, launch/slurm_local_cluster.sh installs and starts it; .ci/run does)"
  try:
    states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30).stdout.split()
  except subprocess.TimeoutExpired:
    return "sinfo does not answer"
  return None if {"idle", "mix", "alloc"} & set(states) else f"no SLURM node up (sinfo: {states or 'nothing'})"


@pytest.mark.slow
def test_slurm_array_runs_the_trials_and_resubmits_only_unfinished_ones(tmp_path, stdlib_cache):
  reason = _slurm_node_up()
  if reason:
    pytest.skip(reason)
  root = tmp_path / "sweep"
  args = sweep_args(
    root,
    stdlib_cache,
    "--grid=optimizer.lr=1e-3,3e-3",
    "--set=optimizer.warmup_steps=0",
    "--executor=slurm",
    "--sbatch_args=--wait --cpus-per-task=1",
  )
  env = {"JAX_PLATFORMS": "cpu"}
  out = run_module("phi1_jax.sweep", *args, env=env, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "--array=0,1 " in out.stdout and "submitted job array" in out.stdout
  plan = spec_lib.read_plan(root)
  assert [trial_lib.status(root, t) for t in plan["trials"]] == ["finished", "finished"]
  task_logs = sorted((root / "slurm").glob("*.out"))
  assert len(task_logs) == 2
  for t in plan["trials"]:
    log = (root / t["name"] / "sweep" / "attempt-1.log").read_text()
    assert "job " in log and "1 nodes, 1 processes" in log and "step 20/20" in log  # through launch/slurm.sbatch

  # One trial made unfinished again (its last checkpoint gone): only it is resubmitted, and it resumes.
  last = root / plan["trials"][1]["name"] / "checkpoints" / "20"
  shutil.rmtree(last)
  out = run_module("phi1_jax.sweep", *args, env=env, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "--array=1 " in out.stdout
  assert last.is_dir() and [len(trial_lib.attempts(root, t)) for t in plan["trials"]] == [1, 2]
  assert "resumed from" in (root / plan["trials"][1]["name"] / "sweep" / "attempt-2.log").read_text()
  out = run_module("phi1_jax.sweep", *args, env=env)
  assert out.returncode == 0 and "nothing to submit" in out.stdout
