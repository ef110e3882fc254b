"""The float64 arbiter: where a cell's values fail the plain tolerance, is the difference what
float32 round-off explains, or a divergence? PyTorch's own accuracy checker
(`torch._dynamo.utils.same`) answers it for two results of one library: it runs the model in
float64 and lets the candidate pass when its RMSE against float64 is within 2 to 3 times the
reference's own. keras-parity has three backends and two compilers, so it also names which cell
is farther from float64, tells a reference that is itself far from float64, and separates
round-off that training amplifies step by step from a divergence a step introduces.

- `run`: the worker's side: the case's computation in float64 (checked to have stayed float64 end
  to end), and float32 runs from weights and inputs nudged by one ulp, which show what round-off
  alone does to it.
- `verdict`: the pytest process's side: each cell's error against float64, the round-off band,
  and the verdict per output, per training step and quantity, and per layer.

It runs only where a cell's comparison failed the plain tolerance, after the cells of a case ran.
"""
