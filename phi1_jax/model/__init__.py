"""The model: `config` (ModelConfig and the presets), `phi` (the Flax NNX module), `attention` and
`flash` (the attention dispatch and the Pallas kernel), `sharding` (meshes, logical-axis rules),
`checkpoint` (the one checkpoint loader and the converter), `hf` (the Hugging Face layout)."""
