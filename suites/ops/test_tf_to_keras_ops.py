"""The migration guide's table of TensorFlow ops and their keras.ops equivalents, row by row.

In each case the TensorFlow cells run the Keras 2 code (the `tf.*` call) and the JAX and torch
cells the migrated code (the `keras.ops` call), compared against the TensorFlow reference
cell: a row whose two sides disagree is a mismatch. Inputs include zeros, negatives and
out-of-domain values, where the two sides are most likely to part.
"""

import numpy as np

import harness


def backend() -> str:
    import keras

    return keras.backend.backend()


def mixed(rng, shape=(3, 4)):
    x = rng.normal(size=shape).astype("float32") * 2
    x.flat[:4] = [0.0, -0.0, 1.0, -1.0]
    return x


def in_unit_interval(rng, shape=(3, 4)):
    return rng.uniform(-0.99, 0.99, size=shape).astype("float32")


def with_specials(rng):
    x = mixed(rng)
    x.flat[4:8] = [np.inf, -np.inf, np.nan, 1e30]
    return x


def booleans(rng):
    return rng.random((3, 4)) > 0.5


def pair(rng):
    return mixed(rng), mixed(rng)


def images(rng, shape=(2, 6, 6, 3)):
    return rng.normal(size=shape).astype("float32")


# (TensorFlow, keras.ops, tf call, keras.ops call, inputs); each call takes the module and the inputs.
ROWS = [
    ("tf.abs", "keras.ops.absolute", lambda tf, x: tf.abs(x), lambda ops, x: ops.absolute(x), mixed),
    ("tf.reduce_all", "keras.ops.all", lambda tf, x: tf.reduce_all(x, axis=1), lambda ops, x: ops.all(x, axis=1), booleans),
    ("tf.reduce_any", "keras.ops.any", lambda tf, x: tf.reduce_any(x, axis=0), lambda ops, x: ops.any(x, axis=0), booleans),
    ("tf.reduce_max", "keras.ops.amax", lambda tf, x: tf.reduce_max(x, axis=1), lambda ops, x: ops.amax(x, axis=1), mixed),
    ("tf.reduce_min", "keras.ops.amin", lambda tf, x: tf.reduce_min(x), lambda ops, x: ops.amin(x), mixed),
    ("tf.reduce_max", "keras.ops.max", lambda tf, x: tf.reduce_max(x, axis=0), lambda ops, x: ops.max(x, axis=0), mixed),
    ("tf.reduce_min", "keras.ops.min", lambda tf, x: tf.reduce_min(x, axis=0), lambda ops, x: ops.min(x, axis=0), mixed),
    ("tf.concat", "keras.ops.concatenate", lambda tf, x, y: tf.concat([x, y], axis=1),
     lambda ops, x, y: ops.concatenate([x, y], axis=1), pair),
    ("tf.range", "keras.ops.arange", lambda tf, x: tf.cast(tf.range(1, 7, 2), "float32") * x[0, 0],
     lambda ops, x: ops.cast(ops.arange(1, 7, 2), "float32") * x[0, 0], mixed),
    ("tf.acos", "keras.ops.arccos", lambda tf, x: tf.acos(x), lambda ops, x: ops.arccos(x), in_unit_interval),
    ("tf.asin", "keras.ops.arcsin", lambda tf, x: tf.asin(x), lambda ops, x: ops.arcsin(x), in_unit_interval),
    ("tf.asinh", "keras.ops.arcsinh", lambda tf, x: tf.asinh(x), lambda ops, x: ops.arcsinh(x), mixed),
    ("tf.atan", "keras.ops.arctan", lambda tf, x: tf.atan(x), lambda ops, x: ops.arctan(x), mixed),
    ("tf.atan2", "keras.ops.arctan2", lambda tf, x, y: tf.atan2(x, y), lambda ops, x, y: ops.arctan2(x, y), pair),
    ("tf.atanh", "keras.ops.arctanh", lambda tf, x: tf.atanh(x), lambda ops, x: ops.arctanh(x), in_unit_interval),
    ("tf.convert_to_tensor", "keras.ops.convert_to_tensor", lambda tf, x: tf.convert_to_tensor(x) * 1,
     lambda ops, x: ops.convert_to_tensor(x) * 1, mixed),
    ("tf.reduce_mean", "keras.ops.mean", lambda tf, x: tf.reduce_mean(x, axis=1), lambda ops, x: ops.mean(x, axis=1), mixed),
    ("tf.clip_by_value", "keras.ops.clip", lambda tf, x: tf.clip_by_value(x, -1.0, 0.5),
     lambda ops, x: ops.clip(x, -1.0, 0.5), mixed),
    ("tf.math.conj", "keras.ops.conjugate", lambda tf, x: tf.math.conj(x), lambda ops, x: ops.conjugate(x), mixed),
    ("tf.linalg.diag_part", "keras.ops.diagonal", lambda tf, x: tf.linalg.diag_part(x),
     lambda ops, x: ops.diagonal(x), mixed),
    ("tf.reverse", "keras.ops.flip", lambda tf, x: tf.reverse(x, axis=[1]), lambda ops, x: ops.flip(x, axis=1), mixed),
    ("tf.gather", "keras.ops.take", lambda tf, x: tf.gather(x, [2, 0, 2], axis=1),
     lambda ops, x: ops.take(x, [2, 0, 2], axis=1), mixed),
    ("tf.math.is_finite", "keras.ops.isfinite", lambda tf, x: tf.math.is_finite(x), lambda ops, x: ops.isfinite(x), with_specials),
    ("tf.math.is_inf", "keras.ops.isinf", lambda tf, x: tf.math.is_inf(x), lambda ops, x: ops.isinf(x), with_specials),
    ("tf.math.is_nan", "keras.ops.isnan", lambda tf, x: tf.math.is_nan(x), lambda ops, x: ops.isnan(x), with_specials),
    ("tf.rank", "keras.ops.ndim", lambda tf, x: tf.rank(x), lambda ops, x: ops.ndim(x), mixed),
    ("tf.math.pow", "keras.ops.power", lambda tf, x, y: tf.math.pow(tf.abs(x), y),
     lambda ops, x, y: ops.power(ops.absolute(x), y), pair),
    ("tf.reduce_prod", "keras.ops.prod", lambda tf, x: tf.reduce_prod(x, axis=1), lambda ops, x: ops.prod(x, axis=1), mixed),
    ("tf.math.reduce_std", "keras.ops.std", lambda tf, x: tf.math.reduce_std(x, axis=0), lambda ops, x: ops.std(x, axis=0), mixed),
    ("tf.reduce_sum", "keras.ops.sum", lambda tf, x: tf.reduce_sum(x, axis=1), lambda ops, x: ops.sum(x, axis=1), mixed),
    ("tf.gather_nd", "keras.ops.take_along_axis", lambda tf, x: tf.gather(x, [[1, 0, 3, 3]] * 3, batch_dims=1),
     lambda ops, x: ops.take_along_axis(x, np.array([[1, 0, 3, 3]] * 3), axis=1), mixed),
    ("tf.math.reduce_variance", "keras.ops.var", lambda tf, x: tf.math.reduce_variance(x), lambda ops, x: ops.var(x), mixed),
    ("tf.nn.sigmoid_cross_entropy_with_logits", "keras.ops.binary_crossentropy",
     lambda tf, x, y: tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.sigmoid(y), logits=x),
     lambda ops, x, y: ops.binary_crossentropy(ops.sigmoid(y), x, from_logits=True), pair),
    ("tf.nn.sparse_softmax_cross_entropy_with_logits", "keras.ops.sparse_categorical_crossentropy",
     lambda tf, x: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=[0, 3, 1], logits=x),
     lambda ops, x: ops.sparse_categorical_crossentropy(np.array([0, 3, 1]), x, from_logits=True), mixed),
    ("tf.nn.softmax_cross_entropy_with_logits", "keras.ops.categorical_crossentropy",
     lambda tf, x, y: tf.nn.softmax_cross_entropy_with_logits(labels=tf.nn.softmax(y), logits=x),
     lambda ops, x, y: ops.categorical_crossentropy(ops.softmax(y), x, from_logits=True), pair),
    ("tf.nn.conv2d", "keras.ops.conv", lambda tf, x: tf.nn.conv2d(x, np.full((3, 3, 3, 2), 0.1, "float32"), 1, "SAME"),
     lambda ops, x: ops.conv(x, np.full((3, 3, 3, 2), 0.1, "float32"), 1, "same"), images),
    ("tf.nn.conv2d_transpose", "keras.ops.conv_transpose",
     lambda tf, x: tf.nn.conv2d_transpose(x, np.full((2, 2, 4, 3), 0.1, "float32"), (2, 12, 12, 4), 2, "SAME"),
     lambda ops, x: ops.conv_transpose(x, np.full((2, 2, 4, 3), 0.1, "float32"), 2, "same"), images),
    ("tf.nn.depthwise_conv2d", "keras.ops.depthwise_conv",
     lambda tf, x: tf.nn.depthwise_conv2d(x, np.full((3, 3, 3, 2), 0.1, "float32"), [1, 1, 1, 1], "VALID"),
     lambda ops, x: ops.depthwise_conv(x, np.full((3, 3, 3, 2), 0.1, "float32"), 1, "valid"), images),
    ("tf.nn.separable_conv2d", "keras.ops.separable_conv",
     lambda tf, x: tf.nn.separable_conv2d(x, np.full((3, 3, 3, 1), 0.1, "float32"),
                                          np.full((1, 1, 3, 4), 0.2, "float32"), [1, 1, 1, 1], "VALID"),
     lambda ops, x: ops.separable_conv(x, np.full((3, 3, 3, 1), 0.1, "float32"),
                                       np.full((1, 1, 3, 4), 0.2, "float32"), 1, "valid"), images),
    ("tf.nn.embedding_lookup", "keras.ops.take", lambda tf, x: tf.nn.embedding_lookup(x, [2, 0, 1]),
     lambda ops, x: ops.take(x, [2, 0, 1], axis=0), mixed),
    ("tf.nn.l2_normalize", "keras.utils.normalize", lambda tf, x: tf.nn.l2_normalize(x, axis=-1),
     lambda ops, x: __import__("keras").utils.normalize(x, axis=-1, order=2), mixed),
    ("tf.tensor_scatter_nd_update", "keras.ops.scatter_update",
     lambda tf, x: tf.tensor_scatter_nd_update(x, [[0, 1], [2, 3]], [9.0, -9.0]),
     lambda ops, x: ops.scatter_update(x, [[0, 1], [2, 3]], [9.0, -9.0]), mixed),
    ("tf.signal.fft2d", "keras.ops.fft2", lambda tf, x, y: tf.math.real(tf.signal.fft2d(tf.complex(x, y))),
     lambda ops, x, y: ops.fft2((x, y))[0], pair),
    ("tf.image.crop_to_bounding_box", "keras.ops.image.crop_images",
     lambda tf, x: tf.image.crop_to_bounding_box(x, 1, 2, 3, 4),
     lambda ops, x: ops.image.crop_images(x, 1, 2, target_height=3, target_width=4), images),
    ("tf.image.pad_to_bounding_box", "keras.ops.image.pad_images",
     lambda tf, x: tf.image.pad_to_bounding_box(x, 1, 2, 9, 10),
     lambda ops, x: ops.image.pad_images(x, 1, 2, target_height=9, target_width=10), images),
]

# Rows whose two sides differ on the installed versions: case name -> xfail declaration.
DIVERGENCES: dict[str, dict] = {
    "rank__ops_ndim": {
        "torch-*-*": ("mismatch", "tf.rank gives an int32 tensor, keras.ops.ndim a Python int: int64 here "
                                  "(values equal)"),
        "jax-*-nojit": ("mismatch", "tf.rank gives an int32 tensor, keras.ops.ndim a Python int: int64 here "
                                    "(values equal; under jax.jit the int becomes int32 and matches)"),
    },
}


def case_name(tf_name: str, ops_name: str) -> str:
    def short(name):
        return name.split(".", 1)[1].replace(".", "_")
    return f"{short(tf_name)}__{short(ops_name)}"


def mapping_case(tf_name, ops_name, tf_call, ops_call, inputs):
    name = case_name(tf_name, ops_name)

    def factory():
        import keras

        if backend() == "tensorflow":
            import tensorflow as tf

            return lambda *args: tf_call(tf, *args)
        return lambda *args: ops_call(keras.ops, *args)

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = __name__
    return name, harness.parity_case(inputs=as_arguments(inputs), checks=["build", "outputs"],
                                     xfail=DIVERGENCES.get(name), covers=[f"tf_to_keras_ops.{name}"])(factory)


def as_arguments(inputs):
    """The function cases spread a tuple of inputs as positional arguments."""
    def make(rng):
        value = inputs(rng)
        return value if isinstance(value, tuple) else (value,)
    return make


for _row in ROWS:
    _name, _case = mapping_case(*_row)
    globals()[_name] = _case
del _row, _name, _case  # module attributes are collected: leave only the cases
