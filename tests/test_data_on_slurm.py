"""The data stages on real clusters: `curate filter` and `decontam` submitted to a one-node SLURM cluster
(launch/slurm_local_cluster.sh; .ci/run starts it as root) and `curate filter` on a local Ray, each
compared with the local pool's output on the same input: the same documents kept, row for row.
Skipped, saying why, where there is no SLURM or no ray. The waits are long (600 s) because under
`pytest -n 2` these jobs may queue behind tests/test_launchers.py's training jobs on the same 2 CPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, repo_env, run_module, slurm_partition
from test_curate import _data_rows, _filter_args, filter_setup, filtered  # noqa: F401 (fixtures)
from test_decontam import BENCH_FLAGS, _read_jsonl, _refs

STAGES = ["score", "sig", "buckets", "cluster", "write"]


@pytest.fixture(scope="module")
def partition() -> str:
  """The default partition of a SLURM cluster with a node offering 2 GB per CPU (datatrove's default request)."""
  return slurm_partition(min_mem_mb=2048)


def _cli(*args, timeout=120, **env):
  """`python -m phi1_jax.curate ...` in a subprocess, as test_curate runs it (plus `env`)."""
  env = repo_env(**{"JAX_PLATFORMS": "cpu", **env})
  return subprocess.run(
    [sys.executable, "-m", "phi1_jax.curate", *args], cwd=REPO, env=env, timeout=timeout, capture_output=True, text=True
  )


def _sorted_rows(folder):
  return sorted(_data_rows(folder), key=lambda r: r["id"])


def _jobs(out):
  return json.loads((out / "logs" / "slurm_jobs.json").read_text())["jobs"]


@pytest.mark.slow
def test_curate_filter_on_slurm_keeps_what_the_local_pool_keeps(partition, filter_setup, filtered, tmp_path):
  base, inputs, _, _ = filter_setup
  local = filtered[0]
  out = tmp_path / "slurm"
  args = [*_filter_args(inputs, base / "cls", out), "--executor=slurm"]

  proc = _cli(*args, "--slurm_partition=no_such_partition")
  assert proc.returncode == 2 and not out.exists(), proc.stderr
  assert proc.stderr.strip().splitlines() == [
    f"python -m phi1_jax.curate filter: error: --slurm_partition=no_such_partition: no such partition (this cluster has: {partition})"
  ]

  # A task that fails on the node (no TPU there) ends the command: what waited on it is cancelled.
  proc = _cli(*args, f"--slurm_partition={partition}", "--slurm_wait", timeout=600, JAX_PLATFORMS="tpu")
  assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
  assert "stage score: 0/2 tasks completed" in proc.stderr.splitlines()[-1]
  assert "cancelled jobs" in proc.stdout
  assert "Unable to initialize backend 'tpu'" in "".join(
    p.read_text() for p in (out / "logs" / "score" / "slurm_logs").glob("*.out")
  )
  queued = subprocess.run(["squeue", "-h", "-j", ",".join(_jobs(out).values())], capture_output=True, text=True)
  assert not queued.stdout.strip()

  # Submitted, the command returns saying how to follow; the same command with --slurm_wait waits
  # for those jobs rather than submitting the tasks again.
  proc = _cli(*args, f"--slurm_partition={partition}", timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  jobs = _jobs(out)
  assert list(jobs) == STAGES and f"squeue -j {','.join(jobs.values())}" in proc.stdout
  assert not (out / "manifest.json").exists()
  proc = _cli(*args, f"--slurm_partition={partition}", "--slurm_wait", timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert "submitted" not in proc.stdout and _jobs(out) == jobs
  for stage in STAGES:  # one output file per task of each stage's job, under OUT/logs/<stage>
    tasks = len(list((out / "logs" / stage / "completions").iterdir()))
    assert len(list((out / "logs" / stage / "slurm_logs").glob(f"{jobs[stage]}_*.out"))) == tasks

  assert _sorted_rows(out / "data") == _sorted_rows(local / "data")
  manifest, expected = (json.loads((d / "manifest.json").read_text()) for d in (out, local))
  assert manifest["totals"] == expected["totals"] and manifest["by_source"] == expected["by_source"]

  # A lost task is the only one submitted again.
  (out / "logs" / "write" / "completions" / "00001").unlink()
  (out / "manifest.json").unlink()
  proc = _cli(*args, f"--slurm_partition={partition}", "--slurm_wait", timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert list(_jobs(out)) == ["write"]
  assert json.loads((out / "logs" / "write" / "ranks_to_run.json").read_text()) == [1]
  assert _sorted_rows(out / "data") == _sorted_rows(local / "data")


@pytest.mark.slow
def test_decontam_on_slurm_matches_the_local_pool(partition, tmp_path):
  from phi1_jax.decontam import fixture as fixture_lib

  docs = fixture_lib.build(_refs(), per_benchmark=4, n_negatives=40, stdlib_bytes=500_000)
  fixture = tmp_path / "fixture.jsonl"
  fixture.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
  common = ["--input", str(fixture), *BENCH_FLAGS, "--tasks=2"]

  proc = run_module(
    "phi1_jax.decontam", *common, f"--out={tmp_path / 'bad'}", "--executor=slurm", "--slurm_partition=no_such_partition"
  )
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert "no such partition" in proc.stderr and not (tmp_path / "bad").exists()

  local, slurm = tmp_path / "local", tmp_path / "slurm"
  proc = run_module("phi1_jax.decontam", *common, f"--out={local}", "--workers=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Another launch_pickled_pipeline first on the submitting shell's PATH: the tasks still run this python's.
  impostor = tmp_path / "bin" / "launch_pickled_pipeline"
  impostor.parent.mkdir()
  impostor.write_text("#!/bin/sh\necho 'not the python that submitted' >&2\nexit 3\n")
  impostor.chmod(0o755)
  proc = run_module(
    "phi1_jax.decontam",
    *common,
    f"--out={slurm}",
    "--executor=slurm",
    f"--slurm_partition={partition}",
    "--slurm_wait",
    timeout=600,
    env={"PATH": f"{impostor.parent}{os.pathsep}{os.environ['PATH']}"},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "slurm: submitted scan job" in proc.stderr
  outputs = "".join(p.read_text() for p in (slurm / "work" / "logs" / "slurm_logs").glob("*.out"))
  assert "Launching pipeline for rank=1" in outputs and "not the python" not in outputs
  assert "--qos" not in (slurm / "work" / "logs" / "launch_script.slurm").read_text()  # the account's own QOS

  def kept(out):
    return sorted((d["id"], d["text"]) for shard in (out / "clean").rglob("*.jsonl.gz") for d in _read_jsonl(shard))

  assert kept(slurm) == kept(local) and len(kept(local)) > 0
  assert sorted(map(json.dumps, _read_jsonl(slurm / "removed.jsonl"))) == sorted(
    map(json.dumps, _read_jsonl(local / "removed.jsonl"))
  )
  manifest, expected = (json.loads((d / "manifest.json").read_text()) for d in (slurm, local))
  assert {k: manifest[k] for k in ("documents", "kept", "removed", "removed_by")} == {
    k: expected[k] for k in ("documents", "kept", "removed", "removed_by")
  }
  assert expected["removed"] > 0


@pytest.mark.slow
def test_curate_filter_on_ray_keeps_what_the_local_pool_keeps(filter_setup, filtered, tmp_path):
  pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[test]' installs it)")
  base, inputs, _, _ = filter_setup
  local, out = filtered[0], tmp_path / "ray"
  proc = _cli(*_filter_args(inputs, base / "cls", out), "--executor=ray", "--ray_cpus=2", timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert _sorted_rows(out / "data") == _sorted_rows(local / "data")
  manifest, expected = (json.loads((d / "manifest.json").read_text()) for d in (out, local))
  assert manifest["totals"] == expected["totals"]
  for stage in STAGES:
    assert (out / "logs" / stage / "completions").is_dir()
