"""Every op XLA cannot compile in a TensorFlow cell, not only the first one.

XLA's error names the first op it could not lower and stops (TF 2.21: `AsString` for the
guide's `tf.strings` model, never the `StringToNumber` after it). To list them all, the cell's
forward computation is traced into a graph and each op type is looked up in TensorFlow's
kernel registry, where XLA registers a kernel for every op it can compile, under its
`XLA_CPU_JIT` / `XLA_GPU_JIT` device types.
"""

from __future__ import annotations

# Graph plumbing that XLA handles itself rather than through a kernel.
STRUCTURAL_OPS = {"Placeholder", "NoOp", "Const", "Identity", "IdentityN", "_Arg", "_Retval",
                  "PartitionedCall", "StatefulPartitionedCall", "ReadVariableOp", "VarHandleOp"}


def unsupported_ops(fn, inputs, device: str) -> list[str]:
    """Op types in `fn(inputs)`'s graph (nested functions included) with no XLA kernel."""
    import tensorflow as tf
    from tensorflow.python.framework import kernels

    jit_device = "XLA_GPU_JIT" if device == "gpu" else "XLA_CPU_JIT"
    graph_def = tf.function(fn).get_concrete_function(inputs).graph.as_graph_def()
    op_types = [node.op for node in graph_def.node]
    for function in graph_def.library.function:
        op_types += [node.op for node in function.node_def]
    missing = []
    for op_type in dict.fromkeys(op_types):
        if op_type in STRUCTURAL_OPS or op_type in missing:
            continue
        device_types = {k.device_type for k in kernels.get_registered_kernels_for_op(op_type).kernel}
        if jit_device not in device_types:
            missing.append(op_type)
    return missing
