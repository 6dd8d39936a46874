"""Weights & Biases logging beside metrics.jsonl and TensorBoard (`--config.wandb.project`), on process 0 only.

`workdir/wandb_run.json` keeps the W&B run id and the last step logged to it, so a resumed run continues the
same W&B run and never logs a step twice: a run resumed from a checkpoint older than its last logged step
trains those steps again (metrics.jsonl gets their rows again, the last written winning) but W&B, whose
history cannot be rewritten (and whose offline mode ignores `resume`), keeps the rows it has. With exact
resume the repeated rows hold the same losses and norms anyway.
"""

from __future__ import annotations

import json
import os
import uuid

STATE_FILE = "wandb_run.json"


class WandbLogger:
  """One W&B run per workdir: the config at start, the numeric metrics of each new logged step."""

  def __init__(self, config, workdir):
    import wandb

    from phi1_jax import paths
    from phi1_jax.cli import UserError

    self.state_path = workdir / STATE_FILE
    self.state = (
      json.loads(self.state_path.read_text())
      if self.state_path.exists()
      else {"run_id": uuid.uuid4().hex[:12], "last_step": 0}
    )
    opts = config.wandb
    local_dir = None if paths.is_remote(workdir) else str(workdir)
    try:
      self.run = wandb.init(
        project=opts.project,
        entity=opts.entity or None,
        name=opts.name or None,
        group=opts.group or None,
        tags=[t.strip() for t in opts.tags.split(",") if t.strip()] or None,
        mode=opts.mode or None,  # "": WANDB_MODE or online
        id=self.state["run_id"],
        resume="allow",
        config=config.to_dict(),
        dir=os.environ.get("WANDB_DIR") or local_dir,  # default: beside the checkpoints
      )
    except wandb.errors.Error as e:  # e.g. online without an API key: one line, not a traceback
      raise UserError(f"config.wandb: {str(e).rstrip('.')}; or log offline: --config.wandb.mode=offline") from None
    self.state_path.write_text(json.dumps(self.state))

  def write(self, step: int, metrics: dict):
    """Logs `metrics` at `step` unless this W&B run already has that step."""
    if step <= self.state["last_step"]:
      return
    self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
    self.state["last_step"] = step
    self.state_path.write_text(json.dumps(self.state))

  def close(self):
    self.run.finish()
