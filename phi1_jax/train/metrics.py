"""Training metrics: JSONL + TensorBoard (+ Weights & Biases when asked), a progress line, durations. Imports no JAX
(the sweep uses `duration`)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path


class MetricWriter:
  """Appends one JSON object per logged step to metrics.jsonl and writes TensorBoard scalars (and W&B's, when
  `config.wandb.project` is set: `phi1_jax.train.wandb_log`).

  A workdir in a bucket gets both through a local staging folder: objects cannot be appended to,
  and tensorboardX's own GCS writer is broken, so the files are written locally and copied up
  whole (they are small) at most every `upload_every_s` seconds, at each `sync()` and at close.
  """

  def __init__(self, workdir, enabled: bool = True, upload_every_s: float = 30.0, config=None):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter

    from phi1_jax import paths

    self.remote = paths.as_path(workdir) if paths.is_remote(workdir) else None
    self.upload_every_s, self.uploaded_at = upload_every_s, time.monotonic()
    if self.remote is None:
      self.local = Path(workdir)
    else:
      self.local = Path(tempfile.mkdtemp(prefix="phi1_jax_metrics_"))
      if (self.remote / "metrics.jsonl").exists():  # a resumed run appends to the rows already there
        (self.local / "metrics.jsonl").write_bytes((self.remote / "metrics.jsonl").read_bytes())
    self.jsonl = open(self.local / "metrics.jsonl", "a")
    self.tb = SummaryWriter(str(self.local / "tb"))  # a new events file per run, as on a disk
    self.wandb = None
    if config is not None and config.wandb.project:
      from phi1_jax.train.wandb_log import WandbLogger

      self.wandb = WandbLogger(config, self.remote or self.local)

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    row = {"step": step, "time": time.time(), **{k: v for k, v in metrics.items() if v is not None}}
    self.jsonl.write(json.dumps(row) + "\n")
    self.jsonl.flush()
    for k, v in metrics.items():
      if isinstance(v, (int, float)):
        self.tb.add_scalar(k, v, step)
    self.tb.flush()
    if self.wandb is not None:
      self.wandb.write(step, metrics)
    if self.remote is not None and time.monotonic() - self.uploaded_at >= self.upload_every_s:
      self.sync()

  def sync(self):
    """Copies the staged files to the bucket (nothing to do for a local workdir)."""
    if not self.enabled or self.remote is None:
      return
    for f in [self.local / "metrics.jsonl", *sorted((self.local / "tb").glob("*"))]:
      (self.remote / f.relative_to(self.local)).write_bytes(f.read_bytes())
    self.uploaded_at = time.monotonic()

  def close(self):
    if self.enabled:
      self.jsonl.close()
      self.tb.close()
      if self.wandb is not None:
        self.wandb.close()
      self.sync()
      if self.remote is not None:
        shutil.rmtree(self.local, ignore_errors=True)


def duration(seconds: float) -> str:
  """1h02m, 3m05s: hours and minutes past an hour, else minutes and seconds."""
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class Progress:
  """A console line per logged step: step, loss, learning rate, throughput, MFU and ETA."""

  def __init__(self, start_step: int, end_step: int, log):
    self.start_step, self.end_step, self.log = start_step, end_step, log
    self.t0 = None  # timing starts after the first logged step (which includes compilation)
    self.step0 = start_step

  def update(self, step: int, m: dict):
    now = time.perf_counter()
    if self.t0 is None:
      self.t0, self.step0 = now, step
      eta = "?"
    else:
      rate = (step - self.step0) / max(now - self.t0, 1e-9)
      eta = duration((self.end_step - step) / max(rate, 1e-9))
    parts = [
      f"step {step}/{self.end_step}",
      f"loss {m['loss']:.4f}",
      f"lr {m['lr']:.2e}",
      f"gnorm {m['grad_norm']:.3f}",
      f"{m['tokens_per_sec']:,.0f} tok/s",
    ]
    if m.get("mfu") is not None:
      parts.append(f"MFU {100 * m['mfu']:.1f}%")
    if m.get("skipped_steps"):
      parts.append(f"skipped {m['skipped_steps']:.0f}")
    if "eval_loss" in m:
      parts.append(f"eval_loss {m['eval_loss']:.4f}")
    parts.append(f"ETA {eta}")
    self.log(" | ".join(parts))
