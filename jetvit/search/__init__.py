"""The search half of Post-Training Attention Search.

- `supernet`: switchable blocks holding candidate attention kinds that inherit the base model's weights, and the
  single-path sampler that trains them
- `beam`: beam search over architecture strings with a pluggable score and a resumable trajectory (pure)
- `driver`: a beam search on a trained supernet (activate, score, save after every score, progress)
- `budget`: what the search may return (the FLOP budget from the model's cost model, Step 2's F budget)
- `scorers`: `scorer(model) -> float` (feature fidelity built in; downstream ones plug in by "module:factory")
"""
