"""A recipe's report from the numbers its steps produced: ROOT/report.md and ROOT/report.png.

`write(results, out_dir)` takes the gathered results (a JSON-able dict: the variants with one value
per seed for each metric, the steps with their status and counts, the stand-ins, the expectation
written before the run) and writes:

- report.md: the stand-ins (never results), the expectation, a table of the variants (mean ± std
  over seeds), each variant against the control per metric (a difference counts only when the
  seeds' ranges do not overlap), every step with its wall time and LLM use, and Table 3 if given.
- report.png: the paper's Figure 2.1 in kind: grouped bars per variant, HumanEval pass@1 and the
  canonical-solution loss, base and finetuned, error bars the std over seeds, each seed a dot.

Any number may be None (a step that has not run): it shows as "n/a" or a gap in the plot.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

# The figure's panels: title, y label, (metric, bar label) pairs. Its size in pixels is FIGSIZE x DPI.
PANELS = (
  ("HumanEval pass@1", "pass@1", (("pass@1 base", "base"), ("pass@1 finetuned", "finetuned"))),
  (
    "HumanEval canonical-solution loss",
    "loss (lower is better)",
    (("canonical loss base", "base"), ("canonical loss finetuned", "finetuned")),
  ),
)
FIGSIZE = (11.0, 4.5)
DPI = 100
COUNTS_SHOWN = 3
DIFFERENCE_RULE = (
  "A variant differs from the control on a metric only when the ranges [min, max] of their seeds' values do not "
  "overlap; overlapping ranges read \"none: inside the seeds' spread\". With fewer than 2 seeds on either side "
  "there is no spread to compare against, so no difference is claimed."
)


# ----------------------------------------------------------------------------- numbers


def known(values) -> list[float]:
  """The values that are numbers (None and NaN dropped)."""
  return [float(v) for v in values or [] if v is not None and not (isinstance(v, float) and math.isnan(v))]


def summary(values) -> dict | None:
  """mean, std (sample, over seeds; 0 for one value), n, min, max of the known values; None if there are none."""
  xs = known(values)
  if not xs:
    return None
  return {
    "mean": statistics.fmean(xs),
    "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
    "n": len(xs),
    "min": min(xs),
    "max": max(xs),
  }


def fmt(value, digits: int = 4) -> str:
  if value is None:
    return "n/a"
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, int):
    return f"{value:,}"
  if isinstance(value, float):
    return f"{value:.{digits}g}"
  return str(value)


def mean_std(values) -> str:
  s = summary(values)
  if s is None:
    return "n/a"
  seeds = f"{s['n']} seed{'s' if s['n'] != 1 else ''}"
  if s["n"] == 1:
    return f"{fmt(s['mean'])} ({seeds})"
  return f"{fmt(s['mean'])} ± {fmt(s['std'], 2)} ({seeds})"


def difference(control, variant, lower_is_better: bool) -> tuple[float | None, str]:
  """(difference of means, verdict) of a variant's values against the control's, by DIFFERENCE_RULE."""
  c, v = summary(control), summary(variant)
  if c is None or v is None:
    return None, "n/a: not measured"
  delta = v["mean"] - c["mean"]
  if c["n"] < 2 or v["n"] < 2:
    return delta, "n/a: fewer than 2 seeds"
  if v["min"] <= c["max"] and c["min"] <= v["max"]:
    return delta, "none: inside the seeds' spread"
  lower = v["mean"] < c["mean"]
  better = lower == lower_is_better
  return delta, f"{'lower' if lower else 'higher'} ({'better' if better else 'worse'})"


# ----------------------------------------------------------------------------- report.md


def _cell(value) -> str:
  return fmt(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
  return lines


def metric_names(results: dict) -> list[str]:
  """Every metric of any variant, in the order first seen."""
  names: list[str] = []
  for variant in results.get("variants") or []:
    for name in variant.get("metrics") or {}:
      if name not in names:
        names.append(name)
  return names


def _metric_header(name: str, lower: set) -> str:
  return f"{name} {'↓' if name in lower else '↑'}"


def _variants_section(results: dict, metrics: list[str], lower: set) -> list[str]:
  rows = []
  for v in results.get("variants") or []:
    epochs = ", ".join(f"{source} {fmt(e, 3)}" for source, e in (v.get("epochs") or {}).items()) or "n/a"
    seeds = ", ".join(str(s) for s in v.get("seeds") or []) or "n/a"
    row = [v.get("name"), v.get("description", ""), seeds, v.get("tokens_seen"), epochs]
    rows.append(row + [mean_std((v.get("metrics") or {}).get(m)) for m in metrics])
  header = ["variant", "description", "seeds", "tokens seen", "epochs per source"]
  return [
    "## Variants",
    "",
    "Each metric: mean ± std over seeds (sample std), with the number of seeds that have a value. "
    "↓: lower is better, ↑: higher is better. The first variant is the control.",
    "",
    *_table(header + [_metric_header(m, lower) for m in metrics], rows),
    "",
  ]


def _differences_section(results: dict, metrics: list[str], lower: set) -> list[str]:
  variants = results.get("variants") or []
  lines = ["## Differences against the control", "", DIFFERENCE_RULE, ""]
  if len(variants) < 2:
    return lines + ["Only one variant: nothing to compare.", ""]
  control = variants[0]
  c_metrics = control.get("metrics") or {}
  rows = []
  for v in variants[1:]:
    v_metrics = v.get("metrics") or {}
    for m in metrics:
      delta, verdict = difference(c_metrics.get(m), v_metrics.get(m), m in lower)
      c_sum, v_sum = summary(c_metrics.get(m)), summary(v_metrics.get(m))
      rows.append(
        [
          f"{v.get('name')} vs {control.get('name')}",
          _metric_header(m, lower),
          fmt(c_sum and c_sum["mean"]),
          fmt(v_sum and v_sum["mean"]),
          "n/a" if delta is None else f"{delta:+.4g}",
          verdict,
        ]
      )
  header = ["comparison", "metric", "control mean", "variant mean", "difference", "verdict"]
  return lines + _table(header, rows) + [""]


def _short(text: str, chars: int = 40) -> str:
  return text if len(text) <= chars else text[: chars - 1] + "…"


def _counts_text(counts: dict | None) -> str:
  items = list((counts or {}).items())
  shown = ", ".join(f"{k}={_short(fmt(v))}" for k, v in items[:COUNTS_SHOWN])
  return shown + (f", … ({len(items) - COUNTS_SHOWN} more)" if len(items) > COUNTS_SHOWN else "")


def _steps_section(results: dict) -> list[str]:
  steps = results.get("steps") or []
  rows = []
  for s in steps:
    wall = s.get("wall_s")
    rows.append(
      [
        s.get("name"),
        s.get("command"),
        s.get("status"),
        "n/a" if wall is None else f"{wall:,.1f}",
        _counts_text(s.get("counts")),
        s.get("llm_requests"),
        s.get("llm_tokens"),
        s.get("folder") or "",
      ]
    )

  def total(key):
    return sum(known(s.get(key) for s in steps))

  statuses: dict[str, int] = {}
  for s in steps:
    statuses[s.get("status") or "n/a"] = statuses.get(s.get("status") or "n/a", 0) + 1
  rows.append(
    [
      f"**total** ({len(steps)} steps)",
      "",
      ", ".join(f"{n} {status}" for status, n in statuses.items()),
      f"{total('wall_s'):,.1f}",
      "",
      int(total("llm_requests")),
      int(total("llm_tokens")),
      "",
    ]
  )
  header = ["step", "command", "status", "wall s", "counts", "LLM requests", "LLM tokens", "folder"]
  return ["## Steps", "", "In run order; totals count the steps with a number.", "", *_table(header, rows), ""]


def markdown(results: dict) -> str:
  """The text of report.md."""
  lower = set(results.get("lower_is_better") or [])
  metrics = metric_names(results)
  lines = [f"# Recipe report: {results.get('recipe', 'n/a')}", ""]
  if results.get("wiring_test"):
    lines += [
      "**Wiring test: the data and the model are too small to show an effect. This run tests that the steps "
      "chain and the report is filled, not the paper's claim; read no number below as a result.**",
      "",
    ]
  lines += [f"Root: `{results.get('root', 'n/a')}`. Written: {results.get('written', 'n/a')}.", ""]
  stand_ins = results.get("stand_ins") or []
  lines += ["## Stand-ins (not results)", ""]
  lines += [f"- {s}" for s in stand_ins] or ["None: every step ran the real thing."]
  lines += ["", "## Expected (written before the run)", ""]
  expected = (results.get("expected") or "").strip()
  lines += [f"> {line}" if line else ">" for line in expected.splitlines()] or ["Nothing was written down."]
  lines += [""]
  lines += _variants_section(results, metrics, lower)
  lines += _differences_section(results, metrics, lower)
  lines += _steps_section(results)
  table3 = results.get("table3")
  if table3:
    lines += ["## Table 3 (decontamination: similar vs non-similar problems)", ""]
    lines += _table(["", "value"], [[k, v] for k, v in table3.items()]) + [""]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- report.png


def plot(results: dict, path: Path) -> None:
  """The grouped-bar figure; a metric without values leaves a gap labelled n/a."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  variants = results.get("variants") or []
  names = [str(v.get("name")) for v in variants]
  fig, axes = plt.subplots(1, len(PANELS), figsize=FIGSIZE, dpi=DPI)
  colors = ("tab:blue", "tab:orange")
  for ax, (title, ylabel, bars) in zip(axes, PANELS):
    width = 0.8 / len(bars)
    for b, (metric, label) in enumerate(bars):
      offset = (b - (len(bars) - 1) / 2) * width
      for i, v in enumerate(variants):
        values = known((v.get("metrics") or {}).get(metric))
        x = i + offset
        if not values:
          ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8, color="gray")
          continue
        s = summary(values)
        ax.bar(x, s["mean"], width, yerr=s["std"], capsize=3, color=colors[b % 2], alpha=0.8)
        # the seeds as dots spread evenly across the bar (no random jitter: the image is deterministic)
        spread = [x + width * 0.6 * (k / max(len(values) - 1, 1) - 0.5) for k in range(len(values))]
        ax.scatter(spread if len(values) > 1 else [x], values, s=12, color="black", zorder=3)
      ax.bar(0, 0, 0, color=colors[b % 2], alpha=0.8, label=label)  # the legend entry, drawn whatever is missing
    shown = [x for v in variants for metric, _ in bars for x in known((v.get("metrics") or {}).get(metric))]
    if shown and "loss" in ylabel:  # losses differ in the second decimal: zoom to them (the axis says so)
      lo, hi = min(shown), max(shown)
      pad = max((hi - lo) * 0.3, 0.02)
      ax.set_ylim(lo - pad, hi + pad)
      ylabel += " (axis not from 0)"
    elif shown:
      ax.set_ylim(0, max(max(shown) * 1.2, 0.05))  # pass@1 is a fraction from 0
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.6, max(len(names), 1) - 0.4)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
  title = f"{results.get('recipe', '')}: HumanEval by pretraining data (bars: mean ± std over seeds; dots: seeds)"
  if results.get("wiring_test"):
    title = "WIRING TEST, not a result: " + title
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
  plt.close(fig)


def write(results: dict, out_dir: Path) -> tuple[Path, Path]:
  """Write out_dir/report.md and out_dir/report.png; returns their paths."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  md_path, png_path = out_dir / "report.md", out_dir / "report.png"
  md_path.write_text(markdown(results) + "\n")
  plot(results, png_path)
  return md_path, png_path
