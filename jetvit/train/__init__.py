"""Training for Post-Training Attention Search: configs, data, distillation, the pipeline, its outputs.

- `config`: typed run configs from YAML with `--set` overrides
- `data`: image folders and the built-in sample photos, random resized crops, deterministic per-step sampling
- `distill`: distillation targets and losses, the resumable (DDP) training loop
- `pipeline`: `run_search` (Step 1, beam search, Step 2, beam search, fine-tuning, export) and `run_distill`
- `checkpoint`, `metrics`, `plots`, `report`: atomic state files, JSON lines + TensorBoard, figures, report.md
"""
