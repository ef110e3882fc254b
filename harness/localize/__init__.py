"""Where a model diverges: the first layer whose output departs from the reference's while its
inputs agree, what that layer does alone, which backend is the odd one out, and a reproducer.

It runs only for cells whose `outputs` mismatched, or whose `train` check first diverged in
the loss of a step (the forward pass of that step, in training mode, from the reference's
weights at its start), after the float64 arbiter kept the mismatch.

- `taps`: every layer call's tensors, captured in a worker while the model runs the cell's way.
- `run`: the worker's side. The reference cell runs the model once more with every layer call
  tapped; then each such cell does, given the reference's taps: it compares them layer by layer
  in the reference's order, feeds the first diverging layer the reference's inputs as it ran in
  the diverging step (`local_err`: the layer's own error, telling a layer that introduces error
  from one that amplifies what it received), and writes a reproducer.
- `reproducer`: the reproducer's folder and script, kept only where a fresh process reproduces it.
- `judge`: the pytest process's side: which backend departs (`outlier`), whether the compiler is
  the cause (a jit cell whose nojit sibling agrees), and what the records get.
"""
