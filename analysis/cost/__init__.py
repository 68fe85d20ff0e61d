"""Cost of a TimeSformer: FLOPs, parameters and memory, estimated in closed form and measured.

One module per concern:
- `analysis.cost.shapes`: `step_shapes`, the groups of every attention step, from the model's own rules;
- `analysis.cost.estimate`: `estimate(config)`, pure arithmetic (no model is built), `count_params` and
  `max_batch_size`;
- `analysis.cost.measure`: `measure(config)`, the real model counted by PyTorch;
- `analysis.cost.sweep`: `sweep` over frames and crop sizes for the three `IMPLEMENTATIONS` of attention;
- `analysis.cost.references`: the official fvcore counts and the paper's TFLOPs, and the tables of
  docs/complexity.md that compare them with the estimate;
- `analysis.cost.cli`: the command (`python analysis/complexity.py`, `tslab cost`).

`analysis.complexity` re-exports the public names of all six.
"""
