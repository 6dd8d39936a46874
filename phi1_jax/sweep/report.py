"""A sweep's results: one row per trial (overrides, status, final and best eval loss, tokens, wall
time), sorted by a metric; printed, and written to ROOT/report/ as results.csv, results.md,
eval_loss.png (curves) and METRIC_vs_swept.png (the metric against each swept value).

Reads only files: works while the sweep runs, after it was killed, or half done.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from phi1_jax.sweep import trials as trial_lib
from phi1_jax.sweep.trials import duration

COLUMNS = ("status", "step", "final_eval_loss", "best_eval_loss", "final_loss", "tokens", "wall_s")


def metric_rows(wd: Path) -> list[dict]:
  """metrics.jsonl, one row per step: the last written wins (a resumed run logs steps again that
  its killed attempt had logged after its checkpoint)."""
  by_step = {row["step"]: row for row in trial_lib.jsonl_rows(wd / "metrics.jsonl")}
  return [by_step[s] for s in sorted(by_step)]


def trial_row(root: Path, trial: dict, extra_metric: str | None = None) -> dict:
  rows = metric_rows(trial_lib.workdir(root, trial))
  evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
  step = rows[-1]["step"] if rows else 0
  row = dict(
    name=trial["name"],
    **trial["overrides"],
    status=trial_lib.status(root, trial),
    step=step,
    final_eval_loss=evals[-1] if evals else None,
    best_eval_loss=min(evals) if evals else None,
    final_loss=rows[-1]["loss"] if rows else None,
    tokens=step * trial["tokens_per_step"],
    wall_s=round(trial_lib.wall_seconds(root, trial), 1),
  )
  if extra_metric and extra_metric not in row:
    row[extra_metric] = next((r[extra_metric] for r in reversed(rows) if extra_metric in r), None)
  return row


def default_mode(metric: str) -> str:
  return "max" if re.search(r"pass@|accuracy", metric) else "min"


def sorted_rows(rows: list[dict], metric: str, mode: str) -> list[dict]:
  """Best first; trials without the metric last, in plan order."""
  have = [r for r in rows if isinstance(r.get(metric), (int, float))]
  have.sort(key=lambda r: r[metric], reverse=mode == "max")
  return have + [r for r in rows if r not in have]


def _fmt(column: str, value) -> str:
  if value is None:
    return "-"
  if column == "wall_s":
    return duration(value)
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    if column.endswith("loss"):
      return f"{value:.4f}"
    return repr(value) if len(repr(value)) <= 10 else f"{value:.4g}"
  if isinstance(value, int):
    return f"{value:,}" if column == "tokens" else str(value)
  return str(value)


def text_table(header: list[str], body: list[list[str]]) -> str:
  widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
  line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
  return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def markdown_table(header: list[str], body: list[list[str]]) -> str:
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
  return "\n".join(out)


def _numeric(values) -> bool:
  return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_curves(root: Path, plan: dict, path: Path) -> bool:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5))
  drawn = 0
  for trial in plan["trials"]:
    rows = [r for r in metric_rows(trial_lib.workdir(root, trial)) if "eval_loss" in r]
    if rows:
      ax.plot([r["step"] for r in rows], [r["eval_loss"] for r in rows], marker=".", label=trial["name"])
      drawn += 1
  if not drawn:
    plt.close(fig)
    return False
  ax.set_xlabel("step")
  ax.set_ylabel("eval loss (nats)")
  ax.set_title(f"eval loss: {root.name}")
  ax.grid(alpha=0.3)
  if drawn <= 20:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_metric_vs_values(rows: list[dict], keys: list[str], metric: str, path: Path) -> bool:
  """One panel per swept key; points sharing the other keys' values are joined (grid lines)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r for r in rows if isinstance(r.get(metric), (int, float))]
  if not rows or not keys:
    return False
  fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4), squeeze=False)
  for ax, key in zip(axes[0], keys):
    values = [r[key] for r in rows]
    numeric = _numeric(values)
    categories = list(dict.fromkeys(map(str, values)))
    x_of = (lambda v: v) if numeric else (lambda v: categories.index(str(v)))
    others = [k for k in keys if k != key]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
      groups.setdefault(tuple(str(r[k]) for k in others), []).append(r)
    for group_key, members in sorted(groups.items()):
      members.sort(key=lambda r: x_of(r[key]))
      label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(others, group_key)) or None
      style = "o-" if len(members) > 1 else "o"
      ax.plot([x_of(r[key]) for r in members], [r[metric] for r in members], style, label=label)
    if numeric and min(values) > 0:  # learning rates (floats over 3x) and sizes (ints over 10x) on a log axis
      spread = max(values) / min(values)
      if spread >= 10 or (spread >= 3 and any(isinstance(v, float) for v in values)):
        ax.set_xscale("log")
    if not numeric:
      ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right", fontsize=7)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if 1 < len(groups) <= 10:
      ax.legend(fontsize=7)
  fig.suptitle(f"{metric} against each swept value")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def _check_metric(root: Path, plan: dict, rows: list[dict], metric: str) -> None:
  """An unknown --metric is a mistake once some trial has logged metrics without it."""
  if metric in COLUMNS or any(r.get(metric) is not None for r in rows):
    return
  logged = set()
  for trial in plan["trials"]:
    for r in metric_rows(trial_lib.workdir(root, trial)):
      logged |= set(r)
  if logged:
    from phi1_jax.cli import UserError

    known = sorted(set(COLUMNS) - {"status"} | logged - {"step", "time"})
    raise UserError(f"--metric={metric}: no trial has it; known: {', '.join(known)}")


def report(root: Path, plan: dict, metric: str, mode: str, log=print) -> dict[str, Path]:
  """Prints the table and writes the files; returns {kind: path}."""
  keys = plan["swept"]
  rows = [trial_row(root, t, metric) for t in plan["trials"]]
  _check_metric(root, plan, rows, metric)
  rows = sorted_rows(rows, metric, mode)
  columns = ["name", *keys, *COLUMNS] + ([metric] if metric not in COLUMNS else [])
  body = [[_fmt(c, r.get(c)) for c in columns] for r in rows]
  out = root / "report"
  out.mkdir(exist_ok=True)
  paths = {"csv": out / "results.csv", "md": out / "results.md"}

  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(columns)
  for r in rows:
    writer.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
  paths["csv"].write_text(buf.getvalue())
  counts = {s: n for s in trial_lib.STATUSES if (n := [r["status"] for r in rows].count(s))}
  status_line = f"{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())
  paths["md"].write_text(
    f"# Sweep {root}\n\n{status_line}; sorted by {metric} ({mode} first).\n\n" + markdown_table(columns, body) + "\n"
  )

  short = {k: k.rsplit(".", 1)[-1] for k in keys}
  screen_cols = ["#", *keys, *COLUMNS] + ([metric] if metric not in COLUMNS else [])
  screen_body = [[r["name"].split("_", 1)[0]] + row[1:] for r, row in zip(rows, body)]
  log(f"sweep {root}: {status_line}; sorted by {metric} ({mode} first)")
  log(text_table([short.get(c, c) for c in screen_cols], screen_body))

  curves = out / "eval_loss.png"
  if plot_curves(root, plan, curves):
    paths["curves"] = curves
  scatter = out / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', metric)}_vs_swept.png"
  if plot_metric_vs_values(rows, keys, metric, scatter):
    paths["metric_plot"] = scatter
  log("wrote " + ", ".join(str(p) for p in paths.values()))
  return paths
