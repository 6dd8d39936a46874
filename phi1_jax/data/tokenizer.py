"""Tokenizers that keep code exact: SentencePiece (trained here) or a Hugging Face tokenizer.json.

`decode(encode(s)) == s` holds for any string: tabs, runs of spaces, trailing spaces, blank
lines, CR/CRLF and non-ASCII survive. How the SentencePiece model gets there:

* identity normalisation, no extra-whitespace removal, no dummy prefix, whitespace-only pieces
  allowed, not split by whitespace (so pieces like "\\n▁▁▁▁" can form for indentation);
* training sentences are chunks of whole lines *with* their newlines, so "\\n" is an ordinary
  character that BPE merges like any other (CR, tabs, emoji etc. are too, or fall back to bytes);
* byte_fallback: characters never seen in training become their UTF-8 bytes;
* SentencePiece writes a space as "▁" (U+2581) and decodes every "▁" back to a space, so a
  literal "▁" in the text would come back as " ". We encode a literal "▁" as its three
  byte-fallback pieces instead, which decode to "▁".

`<|endoftext|>` is a user-defined symbol with id 0 (`eos_id`); it is one id also when it appears
in text. `<unk>` is 1 (never produced: byte_fallback), then the 256 byte pieces.

Command:  python -m phi1_jax.data.tokenizer train --input PATH [PATH ...] [--text_key text] --vocab_size N --out DIR
(inputs as every stage reads them: phi1_jax.data.sources)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm

from phi1_jax import cli, paths

EOS_TOKEN = "<|endoftext|>"
SPM_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"
_SPACE_MARK = "\u2581"  # SentencePiece's escaped space "▁"
_LINES_PER_SENTENCE = 8  # training "sentences" are short runs of lines, newlines included
_MAX_SENTENCE_BYTES = 8192


class Tokenizer:
  """Common interface of both backends."""

  path: str
  eos_id: int
  vocab_size: int

  def encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  def decode(self, ids: Iterable[int]) -> str:
    raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model trained by `train_tokenizer`."""

  def __init__(self, model_file: str):
    self.path = str(model_file)
    try:
      self._sp = spm.SentencePieceProcessor(model_file=self.path)
    except (RuntimeError, OSError) as e:  # sentencepiece names neither the file nor the format
      raise ValueError(f"{self.path}: not a SentencePiece model ({str(e).splitlines()[0]})") from None
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.piece_to_id(EOS_TOKEN)
    if self.eos_id == self._sp.unk_id():
      raise ValueError(f"{self.path}: has no {EOS_TOKEN} piece; train it with train_tokenizer")
    # A literal "▁" is sent as its UTF-8 bytes so it does not decode to a space.
    self._mark_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SPACE_MARK.encode()]
    if self._sp.unk_id() in self._mark_ids:
      raise ValueError(f"{self.path}: model lacks byte_fallback pieces; train it with train_tokenizer")

  def encode(self, text: str) -> list[int]:
    if _SPACE_MARK not in text:
      return self._sp.encode(text)
    ids: list[int] = []
    for i, part in enumerate(text.split(_SPACE_MARK)):
      if i:
        ids.extend(self._mark_ids)
      ids.extend(self._sp.encode(part))
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])


class HFTokenizer(Tokenizer):
  """A Hugging Face `tokenizer.json` (e.g. microsoft/phi-1's CodeGen tokenizer)."""

  def __init__(self, json_file: str):
    import tokenizers  # imported here: only the HF backend needs it

    self.path = str(json_file)
    try:
      self._tok = tokenizers.Tokenizer.from_file(self.path)
    except Exception as e:  # tokenizers raises a bare Exception for any unreadable file
      raise ValueError(f"{self.path}: not a Hugging Face tokenizer.json ({str(e).splitlines()[0]})") from None
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    eos = self._tok.token_to_id(EOS_TOKEN)
    if eos is None:
      raise ValueError(f"{self.path}: has no {EOS_TOKEN} token")
    self.eos_id = eos

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def tokenizer_file(path: str | os.PathLike) -> Path:
  """The model file behind `path` (a dir holding tokenizer.model / tokenizer.json, or the file),
  on a disk or in a bucket."""
  p = paths.as_path(path)
  if p.is_dir():
    for name in (SPM_FILE, HF_FILE):
      if (p / name).is_file():
        return p / name
    raise FileNotFoundError(f"{p}: holds neither {SPM_FILE} nor {HF_FILE}")
  if not p.is_file():
    raise FileNotFoundError(f"{p}: tokenizer not found")
  return p


def spm_as_hf_tokenizer(model_file: str | os.PathLike):
  """A `tokenizers.Tokenizer` giving the ids of a SentencePiece model made by `train_tokenizer`.

  Same pieces and ids; merges in the model's piece order (SentencePiece BPE ranks a merge by its
  result's score, which falls with the id); spaces become "▁" and back; unseen characters fall back
  to bytes. The one difference: a literal "▁" in text, which SentencePieceTokenizer sends as bytes,
  decodes here as a space. ValueError for a model trained with other settings (a dummy prefix,
  another normalisation, unigram), whose text handling this does not reproduce.
  """
  import tokenizers
  from sentencepiece import sentencepiece_model_pb2

  proto = sentencepiece_model_pb2.ModelProto()
  try:
    proto.ParseFromString(paths.as_path(model_file).read_bytes())
  except Exception as e:  # noqa: BLE001 (protobuf's DecodeError has no stable import path)
    raise ValueError(f"{model_file}: not a SentencePiece model ({e})") from None
  trainer, norm = proto.trainer_spec, proto.normalizer_spec
  unlike = [
    name
    for name, ok in (
      ("model_type BPE", trainer.model_type == sentencepiece_model_pb2.TrainerSpec.BPE),
      ("byte_fallback", trainer.byte_fallback),
      ("identity normalization", norm.name == "identity"),
      ("no dummy prefix", not norm.add_dummy_prefix),
      ("whitespace kept", not norm.remove_extra_whitespaces),
    )
    if not ok
  ]
  if unlike:
    raise ValueError(f"{model_file}: not trained as train_tokenizer does (needs {', '.join(unlike)})")
  vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
  if EOS_TOKEN not in vocab:
    raise ValueError(f"{model_file}: has no {EOS_TOKEN} piece")
  normal = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
  ranked = []
  for piece, rank in vocab.items():
    if proto.pieces[rank].type == normal:
      splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
      ranked += [(rank, vocab[a], vocab[b], a, b) for a, b in splits]
  merges = [(a, b) for *_, a, b in sorted(ranked)]
  unk = proto.pieces[trainer.unk_id].piece
  tok = tokenizers.Tokenizer(
    tokenizers.models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True)
  )
  tok.normalizer = tokenizers.normalizers.Replace(" ", _SPACE_MARK)
  tok.decoder = tokenizers.decoders.Sequence(
    [tokenizers.decoders.Replace(_SPACE_MARK, " "), tokenizers.decoders.ByteFallback(), tokenizers.decoders.Fuse()]
  )
  tok.add_special_tokens([tokenizers.AddedToken(EOS_TOKEN, special=True, normalized=False)])
  return tok


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """Loads a SentencePiece `tokenizer.model` or a HF `tokenizer.json` (file or its folder)."""
  f = paths.local_copy(tokenizer_file(path))
  if f.suffix == ".json":
    return HFTokenizer(str(f))
  return SentencePieceTokenizer(str(f))


def file_sha256(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def iter_texts(input_paths: Sequence[str | os.PathLike], text_key: str = "text") -> Iterator[str]:
  """The documents' texts, read as every stage reads its inputs (phi1_jax.data.sources: .py files,
  JSONL, parquet, folders of them); bad items (not UTF-8, not JSON) are passed over."""
  from phi1_jax.data import sources  # imported here: sources takes file_sha256 from this module

  for path in input_paths:
    p = Path(path)
    root = p if p.is_dir() else p.parent
    for f in sources.files_of(p, text_key):
      for doc, _ in sources.read_documents(f, root, [], text_key):
        yield doc["text"]


def _sentences(texts: Iterable[str]) -> Iterator[str]:
  """Runs of `_LINES_PER_SENTENCE` lines, newlines kept, so "\\n" is learned like any char."""
  for text in texts:
    lines = text.splitlines(keepends=True)
    for i in range(0, len(lines), _LINES_PER_SENTENCE):
      chunk = "".join(lines[i : i + _LINES_PER_SENTENCE])
      if len(chunk.encode()) <= _MAX_SENTENCE_BYTES:
        yield chunk


def train_tokenizer(
  input_paths: Sequence[str | os.PathLike],
  vocab_size: int,
  out_dir: str | os.PathLike,
  max_sentences: int = 200_000,
  seed: int = 0,
  text_key: str = "text",
) -> str:
  """Trains a byte-fallback BPE SentencePiece model on code; writes out_dir/tokenizer.model.

  At most `max_sentences` chunks of lines (a uniform sample, seeded) are used, which keeps
  training to seconds. Returns out_dir.
  """
  missing = [str(p) for p in input_paths if not Path(p).exists()]
  if missing:
    raise FileNotFoundError(f"tokenizer input not found: {missing[0]}")
  if vocab_size < 300:
    raise ValueError(f"vocab_size={vocab_size}: must be >= 300 (256 byte pieces + specials + merges)")
  if max_sentences < 1:
    raise ValueError(f"max_sentences={max_sentences}: must be >= 1")
  from phi1_jax.cli import out_dir_problem

  problem = out_dir_problem(out_dir)
  if problem:
    raise ValueError(f"--out {out_dir}: {problem}")
  # Reservoir sample here, so the trainer sees a bounded, reproducible set.
  rng = random.Random(seed)
  sample: list[str] = []
  for n, s in enumerate(_sentences(iter_texts(input_paths, text_key))):
    if len(sample) < max_sentences:
      sample.append(s)
    else:
      j = rng.randrange(n + 1)
      if j < max_sentences:
        sample[j] = s
  if not sample:
    raise ValueError(f"no text found in tokenizer inputs {list(map(str, input_paths))}")

  model = io.BytesIO()
  start = time.time()
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sample),
      model_writer=model,
      vocab_size=vocab_size,
      model_type="bpe",
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      allow_whitespace_only_pieces=True,
      split_by_whitespace=False,
      split_digits=True,
      byte_fallback=True,
      character_coverage=0.9995,
      user_defined_symbols=[EOS_TOKEN],
      unk_id=1,
      bos_id=-1,
      eos_id=-1,
      pad_id=-1,  # user symbols fill id 0 first: eos_id == 0
      max_sentence_length=_MAX_SENTENCE_BYTES,
      input_sentence_size=max_sentences,
      num_threads=os.cpu_count() or 1,
      minloglevel=2,
    )
  except RuntimeError as e:
    raise ValueError(f"SentencePiece training failed (vocab_size={vocab_size}): {str(e).splitlines()[-1]}") from None

  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tmp = out / (SPM_FILE + ".tmp")
  tmp.write_bytes(model.getvalue())
  os.replace(tmp, out / SPM_FILE)  # a killed run never leaves a half-written model
  tok = SentencePieceTokenizer(str(out / SPM_FILE))
  manifest = {
    "tokenizer": SPM_FILE,
    "sha256": file_sha256(out / SPM_FILE),
    "vocab_size": tok.vocab_size,
    "eos_id": tok.eos_id,
    "inputs": [str(p) for p in input_paths],
    "sentences_used": len(sample),
    "max_sentences": max_sentences,
    "seed": seed,
    **({"text_key": text_key} if text_key != "text" else {}),
    "seconds": round(time.time() - start, 2),
  }
  (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
  return str(out)


def main(argv: Sequence[str] | None = None) -> int:
  prog = "python -m phi1_jax.data.tokenizer"
  parser = cli.OneLineParser(prog=prog, description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True, parser_class=cli.OneLineParser)
  train = sub.add_parser("train", help="train a SentencePiece model on code")
  train.add_argument("--input", nargs="+", required=True, help="JSONL(.gz), .parquet, .py files, folders of them")
  train.add_argument("--text_key", default="text", help="JSONL field / parquet column of the text (The Stack: content)")
  train.add_argument("--vocab_size", type=int, required=True)
  train.add_argument("--out", required=True, help="folder for tokenizer.model")
  train.add_argument("--max_sentences", type=int, default=200_000)
  args = parser.parse_args(argv)
  if (Path(args.out) / SPM_FILE).exists():  # packed data and runs name it by its sha256: never replace it
    return cli.report_error(
      f"{prog} {args.command}", f"--out {args.out}: already holds {SPM_FILE}; choose a new folder"
    )
  try:
    out = train_tokenizer(
      args.input, args.vocab_size, args.out, max_sentences=args.max_sentences, text_key=args.text_key
    )
  except (FileNotFoundError, ValueError, cli.UserError) as e:
    return cli.report_error(f"{prog} {args.command}", e)
  tok = load_tokenizer(out)
  print(f"wrote {tokenizer_file(out)} (vocab_size={tok.vocab_size}, eos_id={tok.eos_id})")
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_command(main, kept="no tokenizer is written until training ends"))
