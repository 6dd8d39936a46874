"""The recipe's report: report.md's sections and verdicts, report.png a real image of the stated size."""

import copy

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from phi1_jax.recipe import report  # noqa: E402

LOWER = ["canonical loss base", "canonical loss finetuned", "eval loss base"]


def _variant(name, pass_base, pass_ft, loss_base, loss_ft, eval_loss, tokens=204_800):
  return {
    "name": name,
    "description": f"the {name} corpus",
    "seeds": [0, 1, 2],
    "tokens_seen": tokens,
    "epochs": {name: 0.53},
    "metrics": {
      "pass@1 base": pass_base,
      "pass@1 finetuned": pass_ft,
      "canonical loss base": loss_base,
      "canonical loss finetuned": loss_ft,
      "eval loss base": eval_loss,
    },
  }


def results_dict():
  return {
    "recipe": "tiny",
    "root": "/abs/dir",
    "written": "2026-12-07T16:00:00Z",
    "wiring_test": True,
    "expected": "filtered+textbooks > filtered > raw on canonical-solution loss (lower is better)",
    "stand_ins": ["annotate: a rule-based annotator (tests/curate_fixtures.py), not an LLM"],
    "variants": [
      # the control
      _variant("raw", [0.0, 0.0, 0.0], [0.0, 0.01, 0.0], [5.1, 5.2, 5.0], [4.0, 4.1, 3.9], [3.0, 3.1, 2.9]),
      # canonical loss base overlaps the control's [5.0, 5.2]; finetuned loss is clearly lower (better)
      _variant("filtered", [0.0, 0.0, 0.0], [0.0, 0.0, 0.02], [5.15, 4.9, 5.05], [3.0, 3.1, 2.9], [3.0, 2.95, 3.05]),
      # pass@1 finetuned clearly higher (better); eval loss clearly higher (worse); one seed missing
      _variant(
        "filtered+textbooks", [0.0, None, 0.0], [0.1, 0.12, 0.11], [4.0, 4.1, None], [2.0, 2.1, 2.05], [4.0, 4.2, 4.1]
      ),
    ],
    "lower_is_better": LOWER,
    "steps": [
      {
        "name": "pretrain/raw/seed0",
        "command": "train",
        "status": "done",
        "wall_s": 41.2,
        "counts": {"final_train_loss": 4.2, "final_eval_loss": 4.5, "steps": 200, "tokens": 204800},
        "llm_requests": 0,
        "llm_tokens": 0,
        "folder": "train/3fa2b1c9d0e1",
      },
      {
        "name": "annotate",
        "command": "curate annotate",
        "status": "cached",
        "wall_s": 3.5,
        "counts": {"annotated": 60, "histogram": {str(k): k * 10 for k in range(1, 6)}},
        "llm_requests": 60,
        "llm_tokens": 70_000,
        "folder": "curate annotate/aaaaaaaaaaaa",
      },
      {"name": "eval/raw/seed0", "command": "eval", "status": "not run", "wall_s": None, "counts": {}},
    ],
    "table3": {"similar pass@1": 0.0, "non-similar pass@1": 0.0, "similar problems": 1},
  }


def _difference_rows(md: str) -> dict[tuple[str, str], str]:
  """(comparison, metric without its arrow) -> verdict, from the Differences table."""
  section = md.split("## Differences against the control")[1].split("\n## ")[0]
  rows = {}
  for line in section.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 6 and " vs " in cells[0]:
      rows[(cells[0], cells[1][:-2])] = cells[5]
  return rows


def test_report_sections_and_verdicts(tmp_path):
  md_path, png_path = report.write(results_dict(), tmp_path)
  md = md_path.read_text()
  assert md.startswith("# Recipe report: tiny")
  assert "**Wiring test" in md.split("## Stand-ins")[0]
  assert "- annotate: a rule-based annotator" in md.split("## Expected")[0]
  assert "> filtered+textbooks > filtered > raw" in md
  assert "5.1 ± 0.1 (3 seeds)" in md  # raw's canonical loss base
  assert "4.05 ± 0.071 (2 seeds)" in md  # a missing seed counts out, not as zero
  assert "raw 0.53" in md and "204,800" in md
  assert report.DIFFERENCE_RULE in md

  verdicts = _difference_rows(md)
  assert verdicts[("filtered vs raw", "canonical loss base")] == "none: inside the seeds' spread"
  assert verdicts[("filtered vs raw", "canonical loss finetuned")] == "lower (better)"
  assert verdicts[("filtered+textbooks vs raw", "pass@1 finetuned")] == "higher (better)"
  assert verdicts[("filtered+textbooks vs raw", "eval loss base")] == "higher (worse)"
  assert verdicts[("filtered+textbooks vs raw", "pass@1 base")] == "none: inside the seeds' spread"
  assert len(verdicts) == 2 * 5
  assert "| filtered vs raw | canonical loss finetuned ↓ | 4 | 3 | -1 | lower (better) |" in md

  steps = md.split("## Steps")[1].split("\n## ")[0]
  assert "final_train_loss=4.2, final_eval_loss=4.5, steps=200, … (1 more)" in steps
  assert "annotated=60, histogram={'1': 10, '2': 20, '3': 30, '4': 40, '5… |" in steps  # a long value is cut
  assert "| **total** (3 steps) |  | 1 done, 1 cached, 1 not run | 44.7 |  | 60 | 70,000 |  |" in steps
  assert "## Table 3" in md and "similar pass@1" in md


def test_png_is_a_real_image_of_the_stated_size(tmp_path):
  _, png_path = report.write(results_dict(), tmp_path)
  data = png_path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
  image = plt.imread(png_path)
  assert image.shape[:2] == (round(report.FIGSIZE[1] * report.DPI), round(report.FIGSIZE[0] * report.DPI))
  assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas
  # deterministic: the same results give the same bytes
  again = tmp_path / "again"
  report.write(results_dict(), again)
  assert (again / "report.png").read_bytes() == data


def test_nothing_run_yet_renders(tmp_path):
  results = results_dict()
  results["wiring_test"] = False
  results["table3"] = None
  for v in results["variants"]:
    v["tokens_seen"] = None
    v["epochs"] = {v["name"]: None}
    v["metrics"] = {m: [None, None, None] for m in v["metrics"]}
  for s in results["steps"]:
    s.update(status="not run", wall_s=None, counts=None, llm_requests=None, llm_tokens=None)
  md_path, png_path = report.write(results, tmp_path)
  md = md_path.read_text()
  assert "**Wiring test" not in md and "## Table 3" not in md
  assert set(_difference_rows(md).values()) == {"n/a: not measured"}
  assert "| **total** (3 steps) |  | 3 not run | 0.0 |  | 0 | 0 |  |" in md
  assert plt.imread(png_path).shape[0] == round(report.FIGSIZE[1] * report.DPI)


def test_bare_results_render(tmp_path):
  md_path, _ = report.write({"recipe": "empty", "variants": [], "steps": []}, tmp_path)
  md = md_path.read_text()
  assert "Only one variant: nothing to compare." in md and "None: every step ran the real thing." in md


def test_one_seed_claims_no_difference():
  results = copy.deepcopy(results_dict())
  assert report.difference([5.0], [1.0], lower_is_better=True) == (-4.0, "n/a: fewer than 2 seeds")
  assert report.difference(results["variants"][0]["metrics"]["pass@1 base"], [], False)[1] == "n/a: not measured"
