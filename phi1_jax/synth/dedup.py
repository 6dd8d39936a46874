"""Near-duplicate removal and the diversity report, on datatrove's MinHash.

Signatures are datatrove's (`MinhashDedupSignature.get_shingles` / `get_signature`, its default
5-gram shingles, 14 buckets x 8 hashes, xxhash). Documents arrive one at a time and a rejected one
must be replaced by the next prompt, so instead of datatrove's four-stage batch dedup (signatures,
buckets, clusters, filter, run after the fact) the bucket step is an in-memory LSH index: a new
document whose band equals an earlier kept document's band is a near duplicate.
Words: datatrove's text normalisation, then a split on whitespace (its English tokenizer needs
spaCy, a heavy install, and code is not English anyway).
"""

from __future__ import annotations

import collections
import itertools
import re

import numpy as np
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.word_tokenizers import WordTokenizer


class SplitTokenizer(WordTokenizer):
  """Whitespace words (the text is already normalised by datatrove's simplify_text)."""

  def word_tokenize(self, text: str) -> list[str]:
    return text.split()

  def sent_tokenize(self, text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]

  def span_tokenize(self, text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


class MinHasher:
  def __init__(self, config: MinhashConfig | None = None, work_dir: str = "."):
    # output_folder is where datatrove's batch stage would write; this class never writes.
    self.step = MinhashDedupSignature(
      output_folder=work_dir, config=config or MinhashConfig(), language=SplitTokenizer()
    )

  def signature(self, text: str) -> list[tuple[int, ...]] | None:
    """One tuple of hashes per band, or None when the text has fewer words than a shingle."""
    shingles = self.step.get_shingles(text)
    if shingles.size == 0:
      return None
    return [tuple(band) for band in self.step.get_signature(shingles)]


class NearDuplicateIndex:
  """LSH buckets of the documents kept so far."""

  def __init__(self, hasher: MinHasher):
    self.hasher = hasher
    self.bands: list[dict] = [dict() for _ in range(hasher.step.config.num_buckets)]

  def duplicate_of(self, text: str) -> str | None:
    """The id of a kept document this one nearly duplicates, else None (without adding it)."""
    signature = self.hasher.signature(text)
    for band, sig in zip(self.bands, signature or ()):
      if sig in band:
        return band[sig]
    return None

  def add(self, doc_id: str, text: str) -> None:
    for band, sig in zip(self.bands, self.hasher.signature(text) or ()):
      band.setdefault(sig, doc_id)


_WORD = re.compile(r"\w+")
_FIRST_SENTENCE = re.compile(r"^\W*(.{1,200}?[.!?:])(\s|$)", re.DOTALL)


def opening_sentence(text: str) -> str:
  """The first sentence of the first line that is not a Markdown heading, lower-cased."""
  lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
  first = lines[0] if lines else ""
  match = _FIRST_SENTENCE.match(first)
  return (match.group(1) if match else first)[:200].lower()


def diversity_report(
  texts: list[str],
  metas: list[dict],
  hasher: MinHasher,
  topics_total: int,
  audiences_total: int | None = None,
  max_pairs_docs: int = 500,
) -> dict:
  """Coverage, distinct n-gram ratios, repeated openings and mean pairwise MinHash similarity."""
  report = {"documents": len(texts)}
  topics = collections.Counter(m.get("topic") for m in metas)
  report["topics_covered"] = len(topics)
  report["topics_total"] = topics_total
  report["topic_coverage"] = round(len(topics) / topics_total, 4) if topics_total else None
  if audiences_total:
    audiences = collections.Counter(m.get("audience") for m in metas)
    report["audiences_covered"] = len(audiences)
    report["audiences_total"] = audiences_total
    report["documents_per_audience"] = {
      "min": min(audiences.values(), default=0),
      "max": max(audiences.values(), default=0),
    }
  for n in (1, 2, 3):
    grams, total = set(), 0
    for text in texts:
      words = _WORD.findall(text.lower())
      for gram in zip(*(words[k:] for k in range(n))):
        grams.add(gram)
        total += 1
    report[f"distinct_{n}gram_ratio"] = round(len(grams) / total, 4) if total else None
  openings = collections.Counter(opening_sentence(t) for t in texts)
  report["top_openings"] = [{"opening": o, "count": c} for o, c in openings.most_common(5)]
  report["mean_pairwise_minhash_similarity"] = mean_pairwise_similarity(texts[:max_pairs_docs], hasher)
  return report


def mean_pairwise_similarity(texts: list[str], hasher: MinHasher) -> float | None:
  """Mean over pairs of the fraction of equal MinHash values (an estimate of 5-gram Jaccard)."""
  sigs = [hasher.signature(t) for t in texts]
  sigs = np.array([list(itertools.chain(*s)) for s in sigs if s is not None], dtype=np.uint64)
  if len(sigs) < 2:
    return None
  total, pairs = 0.0, 0
  for i in range(len(sigs) - 1):
    equal = (sigs[i + 1 :] == sigs[i]).mean(axis=1)
    total += float(equal.sum())
    pairs += len(equal)
  return round(total / pairs, 5)
