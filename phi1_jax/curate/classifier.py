"""The `curate train-classifier` stage: a classifier of educational value on document embeddings.

Labels come from `curate annotate` (score >= --threshold is "educational"); features from
`curate embed`. Both models are trained on the same split: scikit-learn's RandomForest (the
paper's) and a logistic regression (the ablation); --model picks the one saved. The held-out split
is fixed by a hash of each document id, so it never depends on order.

  CLS/classifier.skops       the chosen model, saved with skops (not pickle)
  CLS/model_info.json        model kind, threshold, probability cut, the embedder's identity,
                             metrics of both models on the held-out split
  CLS/test_predictions.jsonl held-out rows: id, score, label, probability (both models)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from phi1_jax import cli
from phi1_jax.cli import UserError
from phi1_jax.curate.common import write_json_atomic
from phi1_jax.curate.embeddings import load_embeddings

FORMAT = "phi1_jax.classifier/v1"
MODELS = ("random_forest", "logistic")


def read_annotations(path) -> dict[str, int | None]:
  """id -> score from an annotations.jsonl (or a folder holding one)."""
  path = Path(path)
  if path.is_dir():
    path = path / "annotations.jsonl"
  if not path.is_file():
    raise UserError(f"--annotations {path}: not found")
  scores = {}
  for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      scores[str(row["id"])] = row["score"]
    except (ValueError, KeyError, TypeError):
      raise UserError(f"{path}:{lineno}: not an annotation row (want a JSON object with id and score)") from None
  return scores


def _digest(labelled: list, X: np.ndarray) -> str:
  """What a rerun must find unchanged: the labelled ids and scores and their vectors (not file
  times: rerunning `embed` rewrites its manifest and changes nothing the classifier reads)."""
  h = hashlib.sha256(json.dumps(labelled).encode())
  h.update(np.ascontiguousarray(X, np.float32).tobytes())
  return h.hexdigest()


def _held_out(doc_id: str, seed: int, fraction: float) -> bool:
  h = hashlib.sha256(f"split\0{seed}\0{doc_id}".encode()).digest()
  return int.from_bytes(h[:8], "big") / 2.0**64 < fraction


def make_model(kind: str, seed: int, trees: int):
  from sklearn.ensemble import RandomForestClassifier
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  if kind == "random_forest":
    return RandomForestClassifier(
      n_estimators=trees, class_weight="balanced", min_samples_leaf=2, random_state=seed, n_jobs=1
    )
  return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, cut: float) -> dict:
  """Precision, recall, F1, ROC-AUC and the confusion matrix of `prob >= cut` against y_true."""
  from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

  y_pred = prob >= cut
  p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)
  auc = float(roc_auc_score(y_true, prob)) if len(set(y_true.tolist())) == 2 else None
  tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[False, True]).ravel()
  return {
    "precision": float(p),
    "recall": float(r),
    "f1": float(f),
    "roc_auc": auc,
    "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    "positives": int(y_true.sum()),
    "n": int(len(y_true)),
  }


def train_classifier(
  annotations,
  embeddings,
  out,
  *,
  threshold=3,
  model="random_forest",
  test_fraction=0.2,
  cut=0.5,
  seed=0,
  trees=200,
  log=print,
) -> dict:
  if model not in MODELS:
    raise UserError(f"--model={model!r} is not one of {MODELS}")
  if not 0 < test_fraction < 1:
    raise UserError(f"--test_fraction={test_fraction} must be in (0, 1)")
  if not 0 < cut < 1:
    raise UserError(f"--cut={cut} must be in (0, 1)")
  out = Path(out)
  if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / "settings.json").is_file():
    raise UserError(f"--out {out}: already exists and is not empty; choose a new --out")
  scores = read_annotations(annotations)
  ids, vecs, emb_manifest = load_embeddings(embeddings)
  row_of = {doc_id: i for i, doc_id in enumerate(ids)}
  # by id: annotate writes rows as answers arrive, so the file's order differs between runs; the forest's
  # bootstrap samples follow the row order, and the same annotations must give the same classifier
  labelled = sorted((doc_id, s) for doc_id, s in scores.items() if s is not None)
  missing = [doc_id for doc_id, _ in labelled if doc_id not in row_of]
  if missing:
    raise UserError(
      f"--embeddings {embeddings}: no embedding for {len(missing)} annotated document(s), "
      f"e.g. {missing[0]!r} (embed the annotated input with the same --sample/--seed)"
    )
  if not labelled:
    raise UserError(f"--annotations {annotations}: no row with a parsed score")
  X = vecs[[row_of[doc_id] for doc_id, _ in labelled]]
  score_arr = np.array([s for _, s in labelled])
  y = score_arr >= threshold
  test = np.array([_held_out(doc_id, seed, test_fraction) for doc_id, _ in labelled])
  for name, part in (("training", ~test), ("held-out", test)):
    if len(set(y[part].tolist())) < 2:
      raise UserError(
        f"the {name} split ({int(part.sum())} documents) does not hold both labels at "
        f"--threshold={threshold}; annotate more documents or change the threshold"
      )

  settings = {
    "format": FORMAT,
    "annotations": str(Path(annotations).resolve()),
    "embeddings": str(Path(embeddings).resolve()),
    "data_sha256": _digest(labelled, X),
    "threshold": threshold,
    "model": model,
    "test_fraction": test_fraction,
    "cut": cut,
    "seed": seed,
    "trees": trees,
  }
  try:
    if cli.already_done(out, settings, "model_info.json"):  # written last: a stopped run trains again
      log(f"{out}: already holds the {model} trained on these annotations and embeddings; nothing to do")
      return json.loads((out / "model_info.json").read_text())
  except ValueError as e:
    raise UserError(str(e)) from None

  results, probs, fitted = {}, {}, {}
  for kind in MODELS:
    clf = make_model(kind, seed, trees).fit(X[~test], y[~test])
    probs[kind] = clf.predict_proba(X[test])[:, list(clf.classes_).index(True)]
    results[kind] = binary_metrics(y[test], probs[kind], cut)
    fitted[kind] = clf
    m = results[kind]
    log(
      f"{kind}: precision {m['precision']:.3f} recall {m['recall']:.3f} F1 {m['f1']:.3f} "
      f"ROC-AUC {m['roc_auc']:.3f} on {m['n']} held-out documents ({m['positives']} at score >= {threshold}); "
      f"confusion {m['confusion_matrix']}"
    )

  import skops.io as sio

  out.mkdir(parents=True, exist_ok=True)
  tmp = out / ".classifier.skops.tmp"
  sio.dump(fitted[model], tmp)
  os.replace(tmp, out / "classifier.skops")
  test_ids = [doc_id for (doc_id, _), t in zip(labelled, test) if t]
  with open(out / "test_predictions.jsonl", "w") as fh:
    for i, doc_id in enumerate(test_ids):
      fh.write(
        json.dumps(
          {
            "id": doc_id,
            "score": score_arr[test][i].item(),
            "label": bool(y[test][i]),
            **{f"prob_{k}": float(probs[k][i]) for k in MODELS},
          }
        )
        + "\n"
      )
  info = {
    "format": FORMAT,
    "model": model,
    "threshold": threshold,
    "cut": cut,
    "seed": seed,
    "trees": trees,
    "test_fraction": test_fraction,
    "train_documents": int((~test).sum()),
    "test_documents": int(test.sum()),
    "unparseable_annotations": sum(s is None for s in scores.values()),
    "metrics": results,
    "embedder": emb_manifest["embedder"],
    "annotations": str(Path(annotations).resolve()),
    "embeddings": str(Path(embeddings).resolve()),
  }
  write_json_atomic(out / "model_info.json", info)
  log(f"saved {model} to {out / 'classifier.skops'} (threshold {threshold}, cut {cut})")
  return info


def load_classifier(folder) -> tuple[object, dict]:
  """(fitted model, model_info) from a train-classifier output folder."""
  import skops.io as sio

  folder = Path(folder)
  info_path, model_path = folder / "model_info.json", folder / "classifier.skops"
  if not info_path.is_file() or not model_path.is_file():
    raise UserError(f"--classifier {folder}: needs model_info.json and classifier.skops (from train-classifier)")
  info = json.loads(info_path.read_text())
  if info.get("format") != FORMAT:
    raise UserError(f"--classifier {folder}: format {info.get('format')!r} is not {FORMAT}")
  # Only the types a scikit-learn classifier of ours is made of are trusted on load.
  trusted = sio.get_untrusted_types(file=model_path)
  unexpected = [t for t in trusted if not t.startswith(("sklearn.", "numpy."))]
  if unexpected:
    raise UserError(f"{model_path}: holds types other than scikit-learn's and numpy's: {unexpected[:3]}")
  return sio.load(model_path, trusted=trusted), info
