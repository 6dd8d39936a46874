"""Tokenizer: exact round trip on the embedded corpus and on awkward whitespace; HF backend."""

import gzip
import json
import subprocess
import sys

import pytest

from data_fixtures import small_tokenizer  # noqa: F401 (fixture)
from helpers import STDLIB
from phi1_jax.data.stdlib_corpus import ensure_stdlib_data, stdlib_files
from phi1_jax.data.tokenizer import EOS_TOKEN, load_tokenizer, train_tokenizer

AWKWARD = [
  "",
  "\tdef f(x):\n\t\treturn x  \n",
  "a    b\t \t c   \n\n\n\n   \n",
  "trailing spaces   \nand tabs\t\t\n",
  "windows\r\nline\r\nendings\r\n\r\n",
  "lone\rcarriage return\r",
  "café naïve Ωμέγα 日本語 \u00a0nbsp \u3000ideographic space",
  "emoji 😀🐍👩‍💻 and flags 🇫🇷",
  "the space mark ▁ itself, ▁▁ twice, and ▁ at the end▁",
  "control \x00 \x01 \x7f chars and zero width \u200b\ufeff",
  "    \n        \n",
  "x = 1<|endoftext|>y = 2",
]


@pytest.mark.slow
def test_round_trip_on_whole_embedded_corpus(tmp_path):
  tok_dir, _ = ensure_stdlib_data(tmp_path, vocab_size=4096, seq_len=128)
  tok = load_tokenizer(tok_dir)
  files = stdlib_files()
  assert len(files) > 300
  texts = {str(f): f.read_text(encoding="utf-8") for f in files}
  assert [name for name, text in texts.items() if tok.decode(tok.encode(text)) != text] == []
  # The same model, reused from the cache, holds for the hand-made strings too.
  for s in AWKWARD:
    assert tok.decode(tok.encode(s)) == s, repr(s)


@pytest.mark.parametrize("text", AWKWARD)
def test_round_trip_awkward_strings(small_tokenizer, text):
  tok = load_tokenizer(small_tokenizer)
  assert tok.decode(tok.encode(text)) == text
  assert tok.encode_batch([text, text]) == [tok.encode(text)] * 2


def test_eos_is_one_known_id(small_tokenizer):
  tok = load_tokenizer(small_tokenizer)
  assert tok.encode(EOS_TOKEN) == [tok.eos_id]
  assert tok.decode([tok.eos_id]) == EOS_TOKEN
  assert tok.eos_id == 0 and tok.vocab_size == 1000  # configs/tiny.py sets eos_id=0
  # Loading the file itself is the same as loading its folder.
  assert load_tokenizer(tok.path).encode("def f(): pass") == tok.encode("def f(): pass")


def test_indentation_is_compressed(small_tokenizer):
  tok = load_tokenizer(small_tokenizer)
  code = (STDLIB / "json" / "decoder.py").read_text()
  assert len(tok.encode(code)) < 0.45 * len(code)  # a byte tokenizer would give 1.0


def test_trains_on_jsonl_gz_and_py_file(tmp_path):
  docs = [{"id": str(i), "text": (STDLIB / "json" / "encoder.py").read_text()} for i in range(2)]
  gz = tmp_path / "docs.jsonl.gz"
  with gzip.open(gz, "wt") as f:
    f.write("".join(json.dumps(d) + "\n" for d in docs) + "not json\n")
  out = train_tokenizer([gz, STDLIB / "json" / "scanner.py"], 400, tmp_path / "tok")
  tok = load_tokenizer(out)
  assert tok.vocab_size == 400
  assert json.loads((tmp_path / "tok" / "manifest.json").read_text())["eos_id"] == tok.eos_id


def test_hf_tokenizer_json_backend(tmp_path):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  hf = Tokenizer(models.BPE())
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=400, special_tokens=[EOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
  )
  hf.train_from_iterator([(STDLIB / "json" / "decoder.py").read_text()] * 3, trainer)
  hf.save(str(tmp_path / "tokenizer.json"))

  for path in (tmp_path, tmp_path / "tokenizer.json"):
    tok = load_tokenizer(path)
    assert tok.encode(EOS_TOKEN) == [tok.eos_id] == [hf.token_to_id(EOS_TOKEN)]
    assert tok.vocab_size == hf.get_vocab_size()
    for text in AWKWARD[:9]:
      assert tok.decode(tok.encode(text)) == text, repr(text)
    assert tok.encode_batch(["a  b", "c\td"]) == [tok.encode("a  b"), tok.encode("c\td")]


def test_load_errors_are_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither tokenizer.model nor tokenizer.json"):
    load_tokenizer(tmp_path)


def test_cli_bad_input_one_line(tmp_path):
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "phi1_jax.data.tokenizer",
      "train",
      "--input",
      str(tmp_path / "nope"),
      "--vocab_size",
      "500",
      "--out",
      str(tmp_path / "o"),
    ],
    capture_output=True,
    text=True,
  )
  assert r.returncode != 0
  assert r.stderr.strip().count("\n") == 0 and "not found" in r.stderr
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "phi1_jax.data.tokenizer",
      "train",
      "--input",
      str(STDLIB / "json"),
      "--vocab_size",
      "100",
      "--out",
      str(tmp_path / "o"),
    ],
    capture_output=True,
    text=True,
  )
  assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "vocab_size" in r.stderr


def test_sentencepiece_as_hf_tokenizer_gives_the_same_ids(small_tokenizer):
  """The export's conversion: same ids and exact decoding on code it was not trained on."""
  from phi1_jax.data.tokenizer import spm_as_hf_tokenizer

  tok = load_tokenizer(small_tokenizer)
  hf = spm_as_hf_tokenizer(tok.path)
  texts = [
    f.read_text(encoding="utf-8")
    for pkg in ("json", "email", "asyncio", "collections")
    for f in sorted((STDLIB / pkg).glob("*.py"))
  ]
  texts += [t for t in AWKWARD if "\u2581" not in t]  # a literal "▁" decodes as a space there (docstring)
  for text in texts:
    ids = hf.encode(text, add_special_tokens=False).ids
    assert ids == tok.encode(text), text[:200]
    assert hf.decode(ids, skip_special_tokens=False) == text, text[:200]
  assert hf.token_to_id(EOS_TOKEN) == tok.eos_id and hf.get_vocab_size() == tok.vocab_size
