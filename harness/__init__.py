"""keras-parity: run Keras 3 models, layers and ops under TensorFlow, JAX and PyTorch, and compare.

    import harness

    @harness.parity_case(inputs=harness.spec((4, 16)))
    def small_mlp():
        import keras
        return keras.Sequential([keras.Input((16,)), keras.layers.Dense(3)])
"""

from harness.case import Case, CaseDefinitionError, full_budget, machine_dependent, no_targets, param, parity_case, spec

__all__ = ["Case", "CaseDefinitionError", "full_budget", "machine_dependent", "no_targets", "param", "parity_case", "spec"]
