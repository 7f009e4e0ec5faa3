"""Distillation training: configs, data, the training loop, and the files a run writes.

- `config`: training's config sections (stages, data, distillation, optimizer, run settings; the whole run's config
  is `jetvit.config`)
- `data`: image folders and the built-in sample photos, random resized crops, deterministic per-step sampling
- `distill`: distillation targets and losses, and the resumable training loop (`Trainer`, `train_phase`); the
  distillation of a fixed architecture that the pipeline and the benchmarks share is `jetvit.experiment`'s
- `sharding`: how the loop holds the student across processes, `run.strategy` `ddp` (replicated) or `fsdp` (sharded)
- `losses`: the depth losses on pseudo-labels (scale-and-shift-invariant MSE; Depth Anything's affine-invariant
  loss with gradient matching)
- `checkpoint`, `metrics`, `plots`: checkpoints with RNG state (full, or sharded with `torch.distributed.checkpoint`),
  JSON lines + TensorBoard, figures (a run's `report.md` is `jetvit.report`'s)

What a run is made of is built once by `jetvit.experiment`; the recipe that puts it together with the search is
`jetvit.pipeline`.
"""
