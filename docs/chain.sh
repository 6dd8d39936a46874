#!/usr/bin/env bash
# The paper's chain end to end, offline, on the embedded default data: raw code -> curated, synthetic
# and decontaminated data -> packed -> pretrained on the mixture -> finetuned on exercises -> HumanEval
# and Table 3. Every step is one command of docs/chain.md; each prints its time. Run from the
# repository root:  bash docs/chain.sh   (R=DIR for another output folder, MBPP=mbpp.jsonl to
# decontaminate against MBPP too). Run it again: every step says it has nothing to do.
set -euo pipefail
R=${R:-runs/chain}
mkdir -p "$R"
STD=$(python -c "import os; print(os.path.dirname(os.__file__))")
IN=("$STD"/{json,http,email,urllib,logging,collections,asyncio})  # 81 files stand in for The Stack
BENCH=(--benchmarks=humaneval)
[[ -n ${MBPP:-} ]] && BENCH=("--benchmarks=humaneval,mbpp" "--mbpp_path=$MBPP")
step() { echo; echo "### $*"; local t=$SECONDS; "$@"; echo "### $((SECONDS - t)) s"; }

# Stand-ins for the LLM endpoints (see docs/chain.md for the real ones): a rule-based annotator and
# two deliberately faulty scripted endpoints (20% of requests fail: 429, 500, dropped, garbage).
PYTHONPATH=tests python tests/curate_fixtures.py --port 8125 > "$R/annotator.log" 2>&1 &
python tests/llm_servers.py --port 8123 --responder textbook --fault_rate 0.2 > "$R/textbook_llm.log" 2>&1 &
python tests/llm_servers.py --port 8124 --responder exercise --fault_rate 0.2 > "$R/exercise_llm.log" 2>&1 &
trap 'kill $(jobs -p) 2>/dev/null' EXIT

step python -m phi1_jax.train --config=configs/tiny.py --workdir="$R/tiny"  # the embedder and tokenizer
step python -m phi1_jax.curate annotate --input "${IN[@]}" --sample=60 --out="$R/annotations" \
    --base_url=http://127.0.0.1:8125/v1 --model=rules
step python -m phi1_jax.curate embed --input "${IN[@]}" --sample=60 --checkpoint="$R/tiny" --max_len=128 --out="$R/embeddings"
step python -m phi1_jax.curate train-classifier --annotations="$R/annotations" --embeddings="$R/embeddings" \
    --out="$R/classifier"
step python -m phi1_jax.curate filter --input "${IN[@]}" --classifier="$R/classifier" --out="$R/filtered" --tasks=2 --workers=2
step python -m phi1_jax.synth textbooks --n=200 --out="$R/textbooks" --base_url=http://127.0.0.1:8123/v1 --model=demo
step python -m phi1_jax.synth exercises --n=100 --out="$R/exercises" --base_url=http://127.0.0.1:8124/v1 --model=demo
step python -m phi1_jax.decontam --input "$R/filtered/data" "$R/textbooks" "$R/exercises" --out="$R/decontam" \
    "${BENCH[@]}" --tasks=2 --workers=2
for source in data textbooks; do
  step python -m phi1_jax.data.pack --input "$R/decontam/clean/$source" --tokenizer="$R/tiny/tokenizer.model" \
      --seq_len=128 --eval_fraction=0.2 --out="$R/packed/$source"
done
step python -m phi1_jax.data.pack --input "$R/decontam/clean/exercises" --tokenizer="$R/tiny/tokenizer.model" \
    --seq_len=128 --eval_fraction=0.25 --out="$R/packed/exercises"
step python -m phi1_jax.train --config=configs/tiny.py --workdir="$R/base" --config.total_steps=200 \
    --config.data.mixture="$R/packed/data:0.87,$R/packed/textbooks:0.13"
step python -m phi1_jax.train --config=configs/phi1_finetune.py --config.init_from="$R/base" --workdir="$R/finetuned" \
    --config.data.mixture="$R/packed/exercises" --config.batch_size=16 --config.grad_accum_steps=1 \
    --config.total_steps=60 --config.eval_every=20 --config.log_every=10 --config.checkpoint_every=20
for model in base finetuned; do
  step python -m phi1_jax.eval --checkpoint="$R/$model" --benchmark=humaneval --n_samples=1 --temperature=0 \
      --max_new_tokens=128 --out="$R/eval/$model"
done
step python -m phi1_jax.decontam --input "$R/filtered/data" "$R/textbooks" "$R/exercises" --out="$R/decontam" \
    "${BENCH[@]}" --tasks=2 --workers=2 --results="$R/eval/finetuned"
