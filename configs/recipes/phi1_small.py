"""Figure 2.1 at phi-1-small's scale (350M, the model of the paper's Section 2.1): The Stack's Python
and StackOverflow, a real LLM endpoint, the paper's steps and tokens. Print the plan and its cost first:

    python -m phi1_jax.recipe run configs/recipes/phi1_small.py --root=/data/recipe --dry_run \
        --set llm.base_url=https://api.openai.com/v1 --set llm.model=gpt-4o-mini

raw_inputs: The Stack v1 (`bigcode/the-stack-dedup`, data/python/*.parquet, code in `content`, ids in
`hexsha`) and StackOverflow exported to parquet with the same two columns. The Stack v2 and
Stack-Edu carry blob ids only: fetch their contents into a `content` column first. The key of the
endpoint is read from $OPENAI_API_KEY. Training steps run on SLURM with `--set launcher=slurm`
(and `run --sbatch_args='--nodes=1 ...'`).
"""

from phi1_jax.recipe import paper


def get_config():
  c = paper.knobs()
  c.name = "phi1_small"
  c.raw_inputs = "data/the-stack-dedup/data/python,data/stackoverflow-python"
  c.text_key, c.id_key = "content", "hexsha"
  c.expected = (
    "The paper's direction: at equal tokens, HumanEval pass@1 raw < filtered < filtered+textbooks before "
    "finetuning (Section 2.1: 12.19% unfiltered vs 17.68% filtered at 350M; phi-1-base 29%), and every variant "
    "higher after finetuning on exercises (phi-1 50.6%). Canonical-solution loss in the opposite order."
  )
  c.pretrain.config = "configs/phi1_small.py"  # 36,000 steps x 1024 x 2048 tokens
  c.finetune.config = "configs/phi1_finetune.py"  # 6,000 steps x 256 sequences
  c.embed.embedder_steps = 2000
  return c


def get_recipe(config):
  return paper.build(config)
