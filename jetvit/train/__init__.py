"""Distillation training: configs, data, the training loop, and the files a run writes.

- `config`: typed run configs from YAML with `--set` overrides
- `data`: image folders and the built-in sample photos, random resized crops, deterministic per-step sampling
- `distill`: distillation targets and losses, the resumable training loop `train_phase`, and the distillation
  of a fixed architecture (`finetune`, `distill_arch`) shared by the pipeline and the benchmarks
- `sharding`: how the loop holds the student across processes, `run.strategy` `ddp` (replicated) or `fsdp` (sharded)
- `losses`: the depth losses on pseudo-labels (scale-and-shift-invariant MSE; Depth Anything's affine-invariant
  loss with gradient matching)
- `checkpoint`, `metrics`, `plots`, `report`: checkpoints with RNG state (full, or sharded with
  `torch.distributed.checkpoint`), JSON lines + TensorBoard, figures, report.md

The recipe that puts these together with the search is `jetvit.pipeline`.
"""
