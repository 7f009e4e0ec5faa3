"""The search half of Post-Training Attention Search.

- `supernet`: switchable blocks holding candidate attention kinds that inherit the base model's weights
- `beam`: beam search over architecture strings with a pluggable score, budgets and a resumable trajectory
- `scorers`: `scorer(model) -> float` (feature fidelity built in; downstream ones plug in by "module:factory")
"""
