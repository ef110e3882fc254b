"""Keras 2 as the reference: a case's tf.keras code (`keras2=`) run in keras2 cells, and what a
migrating team does to move from it to Keras 3.

- `cell`: the keras2 cell, in a TensorFlow worker where `tf.keras` is tf-keras (Keras 2): the
  model built by the case's Keras 2 factory or loaded from its `.h5` file, its inference outputs
  and training steps recorded as a Keras 3 cell records them, and its files written as Keras 2
  writes them (`.h5` weights, the whole model as `.h5`, compiled where it was, before and after
  training).
- `migrate`: the Keras 3 side, in every Keras 3 cell of such a case: the Keras 2 weights moved by
  Keras 3's `load_weights` (by topology, then by name, then by order and shape), the names that
  tie each Keras 3 variable to its Keras 2 one, and `load_model` of the Keras 2 file with the
  fallbacks a team reaches for (`compile=False`, the config keys Keras 3 no longer takes
  dropped), each step's failure with the fix it needs.

Both run in workers only: the pytest process compares what they wrote as it compares any cell's.
"""
