"""Models as public Keras 3 examples write them: the guard against regressions on real code.

Each case is modelled on one keras-io example (named in its docstring with what was changed):
the same layers, the same custom-layer code patterns (constructors without `**kwargs`,
`get_config` from `super()`, a `Lambda` of a plain function, a graph held as tensors on the
model, a sampling layer with its own `SeedGenerator`), shrunk to a few units so that every
backend runs them in seconds. What the examples do that Keras cannot save or export is a
property of the model, declared where it is measured, with the check that finds it.

Budget: torch.compile takes tens of seconds per model on a CPU, and these models' layers are
compiled elsewhere in the suites (`suites/layers`, `suites/models`): torch's jit cells run
for the two smallest models only.
"""

import numpy as np

import harness

TORCH_COMPILE_BUDGET = {"torch-*-jit": "budget: torch.compile of this model's layers runs in suites/layers and "
                                      "suites/models; here it is compiled for vit_tiny and siamese_distance only"}


def images(shape):
    return lambda rng: rng.uniform(0, 255, size=shape).astype("float32")


# -- vision transformer (examples/vision/image_classification_with_vision_transformer.py) --

def vit_layers():
    import keras
    from keras import layers, ops

    class Patches(layers.Layer):
        # As the example writes it: no **kwargs, and get_config() from super(), so the saved
        # config holds `name` and friends that __init__ does not take.
        def __init__(self, patch_size):
            super().__init__()
            self.patch_size = patch_size

        def call(self, images):
            batch, height, width, channels = ops.shape(images)
            patches = keras.ops.image.extract_patches(images, size=self.patch_size)
            return ops.reshape(patches, (batch, (height // self.patch_size) * (width // self.patch_size),
                                         self.patch_size * self.patch_size * channels))

        def get_config(self):
            config = super().get_config()
            config.update({"patch_size": self.patch_size})
            return config

    class PatchEncoder(layers.Layer):
        def __init__(self, num_patches, projection_dim):
            super().__init__()
            self.num_patches = num_patches
            self.projection = layers.Dense(units=projection_dim)
            self.position_embedding = layers.Embedding(input_dim=num_patches, output_dim=projection_dim)

        def call(self, patch):
            positions = ops.expand_dims(ops.arange(start=0, stop=self.num_patches, step=1), axis=0)
            return self.projection(patch) + self.position_embedding(positions)

        def get_config(self):
            config = super().get_config()
            config.update({"num_patches": self.num_patches})
            return config

    return Patches, PatchEncoder


def mlp(x, hidden_units, dropout_rate):
    from keras import layers

    for units in hidden_units:
        x = layers.Dense(units, activation="gelu")(x)
        x = layers.Dropout(dropout_rate)(x)
    return x


@harness.parity_case(
    inputs=images((2, 16, 16, 3)), covers=["keras.layers.MultiHeadAttention", "keras.ops.image.extract_patches"],
    xfail={"*-*-nojit": ("error", "Patches.__init__() takes no **kwargs: the .keras file cannot rebuild it, on "
                                  "every backend", "init_without_kwargs")})
def vit_tiny():
    """The example's ViT at 16x16 pixels, patches of 8, 1 transformer layer of 2 heads of 8."""
    import keras
    from keras import layers

    Patches, PatchEncoder = vit_layers()
    inputs = keras.Input((16, 16, 3))
    encoded = PatchEncoder(4, 8)(Patches(8)(layers.Rescaling(1 / 255)(inputs)))
    x1 = layers.LayerNormalization(epsilon=1e-6)(encoded)
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=8, dropout=0.1)(x1, x1)
    x2 = layers.Add()([attention, encoded])
    x3 = mlp(layers.LayerNormalization(epsilon=1e-6)(x2), [16, 8], 0.1)
    representation = layers.Flatten()(layers.LayerNormalization(epsilon=1e-6)(layers.Add()([x3, x2])))
    features = mlp(layers.Dropout(0.5)(representation), [8], 0.5)
    return keras.Model(inputs, layers.Dense(3)(features))


# -- text classification with a transformer (examples/nlp/text_classification_with_transformer.py)

def text_layers():
    import keras
    from keras import layers, ops

    class TransformerBlock(layers.Layer):
        def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1):
            super().__init__()
            self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
            self.ffn = keras.Sequential([layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)])
            self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
            self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
            self.dropout1 = layers.Dropout(rate)
            self.dropout2 = layers.Dropout(rate)

        def call(self, inputs):
            attn_output = self.dropout1(self.att(inputs, inputs))
            out1 = self.layernorm1(inputs + attn_output)
            return self.layernorm2(out1 + self.dropout2(self.ffn(out1)))

    class TokenAndPositionEmbedding(layers.Layer):
        def __init__(self, maxlen, vocab_size, embed_dim):
            super().__init__()
            self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
            self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

        def call(self, x):
            positions = ops.arange(start=0, stop=ops.shape(x)[-1], step=1)
            return self.token_emb(x) + self.pos_emb(positions)

    return TransformerBlock, TokenAndPositionEmbedding


@harness.parity_case(
    inputs=lambda rng: rng.integers(0, 50, size=(2, 10)).astype("int32"), skip=TORCH_COMPILE_BUDGET,
    covers=["keras.layers.MultiHeadAttention", "keras.layers.Embedding"],
    xfail={"*-*-nojit": ("error", "TokenAndPositionEmbedding.__init__() takes no **kwargs: the .keras file cannot "
                                  "rebuild it (unexpected keyword argument 'trainable'), on every backend; under "
                                  "torch the ONNX route fails too", "init_without_kwargs")})
def text_transformer():
    """The example's classifier with a vocabulary of 50, sequences of 10, embeddings of 8."""
    import keras
    from keras import layers

    TransformerBlock, TokenAndPositionEmbedding = text_layers()
    inputs = layers.Input(shape=(10,), dtype="int32")
    x = TransformerBlock(8, 2, 16)(TokenAndPositionEmbedding(10, 50, 8)(inputs))
    x = layers.Dropout(0.1)(layers.GlobalAveragePooling1D()(x))
    x = layers.Dropout(0.1)(layers.Dense(8, activation="relu")(x))
    return keras.Model(inputs=inputs, outputs=layers.Dense(2, activation="softmax")(x))


# -- time-series classification with a transformer (examples/timeseries/timeseries_classification_transformer.py)

@harness.parity_case(inputs=harness.spec((2, 20, 1)), skip=TORCH_COMPILE_BUDGET,
                     covers=["keras.layers.Conv1D", "keras.layers.GlobalAveragePooling1D"],
                     xfail={"torch-cpu-nojit": ("error", "torch.onnx cannot export MultiHeadAttention's "
                                                         "shape-dependent Gather (keras/src/ops/nn.py)", "onnx_export")})
def timeseries_transformer():
    """The example's encoder blocks (attention, then a Conv1D feed-forward), 2 heads of 4, 2 blocks."""
    import keras
    from keras import layers

    def transformer_encoder(inputs, head_size, num_heads, ff_dim, dropout=0):
        x = layers.MultiHeadAttention(key_dim=head_size, num_heads=num_heads, dropout=dropout)(inputs, inputs)
        x = layers.Dropout(dropout)(x)
        res = layers.LayerNormalization(epsilon=1e-6)(x) + inputs
        x = layers.Conv1D(filters=ff_dim, kernel_size=1, activation="relu")(res)
        x = layers.Dropout(dropout)(x)
        x = layers.Conv1D(filters=inputs.shape[-1], kernel_size=1)(x)
        return layers.LayerNormalization(epsilon=1e-6)(x) + res

    inputs = keras.Input(shape=(20, 1))
    x = inputs
    for _ in range(2):
        x = transformer_encoder(x, 4, 2, 4, 0.25)
    x = layers.GlobalAveragePooling1D(data_format="channels_last")(x)
    x = layers.Dropout(0.4)(layers.Dense(8, activation="relu")(x))
    return keras.Model(inputs, layers.Dense(2, activation="softmax")(x))


# -- structured data (examples/structured_data/structured_data_classification_with_feature_space.py)

@harness.parity_case(
    inputs=lambda rng: {"age": rng.normal(50, 10, size=(4, 1)).astype("float32"),
                        "thal": rng.integers(0, 3, size=(4, 1)).astype("int32"),
                        "chol": rng.normal(240, 40, size=(4, 1)).astype("float32")},
    skip=TORCH_COMPILE_BUDGET, covers=["keras.layers.Normalization", "keras.layers.CategoryEncoding"],
    xfail={"tensorflow-cpu-nojit": ("error", "the ONNX file tf2onnx writes takes Normalization's mean and "
                                             "variance as graph inputs ('Required inputs ... Sub/y:0 ... are "
                                             "missing'), also in a plain script", "onnx_export")})
def structured_data_dict_inputs():
    """The example's model after its FeatureSpace: a dict of named inputs, numeric features
    normalised with statistics adapted from data, a categorical one one-hot encoded."""
    import keras
    from keras import layers

    inputs = {"age": keras.Input((1,), name="age"), "thal": keras.Input((1,), name="thal", dtype="int32"),
              "chol": keras.Input((1,), name="chol")}
    features = []
    for name, mean, variance in (("age", 50.0, 100.0), ("chol", 240.0, 1600.0)):
        features.append(layers.Normalization(mean=mean, variance=variance)(inputs[name]))
    features.append(layers.CategoryEncoding(num_tokens=3, output_mode="one_hot")(inputs["thal"]))
    x = layers.Dropout(0.5)(layers.Dense(8, activation="relu")(layers.concatenate(features)))
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))


# -- image classification from scratch (examples/vision/image_classification_from_scratch.py)

@harness.parity_case(inputs=images((2, 32, 32, 3)), skip=TORCH_COMPILE_BUDGET,
                     covers=["keras.layers.SeparableConv2D", "keras.layers.BatchNormalization"])
def xception_small():
    """The example's small Xception: entry convolution, separable-convolution blocks with
    strided 1x1 residuals, widths 8 and 16 instead of 128 to 728."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(32, 32, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Activation("relu")(layers.BatchNormalization()(layers.Conv2D(8, 3, strides=2, padding="same")(x)))
    previous_block_activation = x
    for size in [8, 16]:
        x = layers.Activation("relu")(x)
        x = layers.BatchNormalization()(layers.SeparableConv2D(size, 3, padding="same")(x))
        x = layers.Activation("relu")(x)
        x = layers.BatchNormalization()(layers.SeparableConv2D(size, 3, padding="same")(x))
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(size, 1, strides=2, padding="same")(previous_block_activation)
        x = layers.add([x, residual])
        previous_block_activation = x
    x = layers.Activation("relu")(layers.BatchNormalization()(layers.SeparableConv2D(16, 3, padding="same")(x)))
    x = layers.Dropout(0.25)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, layers.Dense(1, activation=None)(x))


# -- variational autoencoder (examples/generative/vae.py) ------------------------------------

def sampling_layer():
    import keras
    from keras import layers, ops

    class Sampling(layers.Layer):
        """Uses (z_mean, z_log_var) to sample z, the vector encoding a digit."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(1337)

        def call(self, inputs):
            z_mean, z_log_var = inputs
            batch, dim = ops.shape(z_mean)[0], ops.shape(z_mean)[1]
            epsilon = keras.random.normal(shape=(batch, dim), seed=self.seed_generator)
            return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    return Sampling


@harness.parity_case(inputs=images((2, 12, 12, 1)), skip=TORCH_COMPILE_BUDGET, covers=["keras.random.normal"],
                     xfail={"tensorflow-cpu-nojit": ("error", "tf2onnx cannot convert StatelessRandomNormalV2 "
                                                              "(the ONNX route; the SavedModel passes)", "onnx_export"),
                            "torch-cpu-nojit": ("error", "torch.onnx cannot export the torch.Generator the draws "
                                                         "use", "onnx_export")})
def vae_encoder_decoder():
    """The example's encoder, sampling layer and decoder chained (12x12 images, 2 latent
    dimensions, 4 and 8 filters): random at inference, so compared by law over calls."""
    import keras
    from keras import layers

    Sampling = sampling_layer()
    inputs = keras.Input(shape=(12, 12, 1))
    x = layers.Conv2D(4, 3, activation="relu", strides=2, padding="same")(layers.Rescaling(1 / 255)(inputs))
    x = layers.Conv2D(8, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Dense(8, activation="relu")(layers.Flatten()(x))
    z = Sampling()([layers.Dense(2, name="z_mean")(x), layers.Dense(2, name="z_log_var")(x)])
    x = layers.Reshape((3, 3, 8))(layers.Dense(3 * 3 * 8, activation="relu")(z))
    x = layers.Conv2DTranspose(8, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Conv2DTranspose(4, 3, activation="relu", strides=2, padding="same")(x)
    return keras.Model(inputs, layers.Conv2DTranspose(1, 3, activation="sigmoid", padding="same")(x))


# -- ConvMixer (examples/vision/convmixer.py) ---------------------------------------------------

@harness.parity_case(inputs=images((2, 16, 16, 3)), skip=TORCH_COMPILE_BUDGET,
                     covers=["keras.layers.DepthwiseConv2D"],
                     xfail={"tensorflow-cpu-nojit": ("error", "tf2onnx writes gelu as Erfc, which onnxruntime cannot "
                                                              "load at opset 15", "onnx_export")})
def convmixer_small():
    """The example's ConvMixer with filters 8, depth 2, kernel 3, patches of 2, 16x16 images."""
    import keras
    from keras import layers

    def activation_block(x):
        return layers.BatchNormalization()(layers.Activation("gelu")(x))

    def conv_mixer_block(x, filters, kernel_size):
        x0 = x
        x = layers.Add()([activation_block(layers.DepthwiseConv2D(kernel_size=kernel_size, padding="same")(x)), x0])
        return activation_block(layers.Conv2D(filters, kernel_size=1)(x))

    inputs = keras.Input((16, 16, 3))
    x = activation_block(layers.Conv2D(8, kernel_size=2, strides=2)(layers.Rescaling(scale=1.0 / 255)(inputs)))
    for _ in range(2):
        x = conv_mixer_block(x, 8, 3)
    return keras.Model(inputs, layers.Dense(3, activation="softmax")(layers.GlobalAvgPool2D()(x)))


# -- next-frame prediction with ConvLSTM (examples/vision/conv_lstm.py) -----------------------

@harness.parity_case(inputs=lambda rng: rng.uniform(size=(2, 3, 8, 8, 1)).astype("float32"),
                     skip=TORCH_COMPILE_BUDGET, covers=["keras.layers.ConvLSTM2D", "keras.layers.Conv3D"],
                     xfail={"torch-cpu-nojit": ("error", "torch.onnx: 'onnx memory_format support is not "
                                                         "implemented' for the 5-D transpose", "onnx_export")})
def conv_lstm_frames():
    """The example's stack of ConvLSTM2D layers and a Conv3D head: 3 frames of 8x8, 4 filters."""
    import keras
    from keras import layers

    inputs = layers.Input(shape=(None, 8, 8, 1))
    x = layers.ConvLSTM2D(filters=4, kernel_size=(5, 5), padding="same", return_sequences=True, activation="relu")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ConvLSTM2D(filters=4, kernel_size=(3, 3), padding="same", return_sequences=True, activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.ConvLSTM2D(filters=4, kernel_size=(1, 1), padding="same", return_sequences=True, activation="relu")(x)
    return keras.Model(inputs, layers.Conv3D(filters=1, kernel_size=(3, 3, 3), activation="sigmoid", padding="same")(x))


# -- graph attention network (examples/graph/gat_node_classification.py) ----------------------

def graph_attention_network():
    import keras
    from keras import layers, ops

    class GraphAttention(layers.Layer):
        def __init__(self, units, kernel_initializer="glorot_uniform", **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.kernel_initializer = keras.initializers.get(kernel_initializer)

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[0][-1], self.units),
                                          initializer=self.kernel_initializer, name="kernel")
            self.kernel_attention = self.add_weight(shape=(self.units * 2, 1),
                                                    initializer=self.kernel_initializer, name="kernel_attention")

        def call(self, inputs):
            node_states, edges = inputs
            z = ops.matmul(node_states, self.kernel)
            target, source = edges[:, 0], edges[:, 1]
            scores = ops.leaky_relu(ops.matmul(ops.concatenate([ops.take(z, target, axis=0),
                                                                ops.take(z, source, axis=0)], axis=-1),
                                               self.kernel_attention))
            scores = ops.exp(ops.clip(ops.squeeze(scores, -1), -2, 2))
            num_nodes = ops.shape(node_states)[0]
            total = ops.take(ops.segment_sum(scores, target, num_segments=num_nodes), target, axis=0)
            weighted = ops.take(z, source, axis=0) * ops.expand_dims(scores / (total + 1e-8), axis=-1)
            return ops.segment_sum(weighted, target, num_segments=num_nodes)

    class MultiHeadGraphAttention(layers.Layer):
        def __init__(self, units, num_heads=8, **kwargs):
            super().__init__(**kwargs)
            self.attention_layers = [GraphAttention(units) for _ in range(num_heads)]

        def call(self, inputs):
            node_states, edges = inputs
            return ops.relu(ops.concatenate([layer([node_states, edges]) for layer in self.attention_layers], axis=-1))

    class GraphAttentionNetwork(keras.Model):
        """The graph (node states and edges) held as tensors on the model; the input is which
        nodes to predict for."""

        def __init__(self, node_states, edges, hidden_units, num_heads, num_layers, output_dim, **kwargs):
            super().__init__(**kwargs)
            self.node_states = node_states
            self.edges = edges
            self.preprocess = layers.Dense(hidden_units * num_heads, activation="relu")
            self.attention_layers = [MultiHeadGraphAttention(hidden_units, num_heads) for _ in range(num_layers)]
            self.output_layer = layers.Dense(output_dim)

        def call(self, inputs, training=False):
            x = self.preprocess(self.node_states)
            for attention_layer in self.attention_layers:
                x = attention_layer([x, self.edges]) + x
            return ops.take(self.output_layer(x), inputs, axis=0)

    return GraphAttentionNetwork


@harness.parity_case(inputs=lambda rng: np.arange(6, dtype="int32"), targets=lambda rng: rng.normal(size=(6, 3)).astype("float32"),
                     skip=TORCH_COMPILE_BUDGET, covers=["keras.ops.segment_sum"],
                     xfail={"*-*-nojit": ("error", "GraphAttentionNetwork takes tensors in __init__ and has no "
                                                   "get_config: it cannot be saved, on every backend (and its "
                                                   "ONNX files under TensorFlow and torch fail too)", "not_rebuildable")})
def graph_attention():
    """The example's network on a graph of 10 nodes and 20 edges (a seeded random graph, not
    Cora), 4 hidden units, 2 heads, 2 layers: the graph is constant data on the model, not
    state, and it trains the same on every backend."""
    import keras

    rng = np.random.default_rng(0)
    node_states = keras.ops.convert_to_tensor(rng.normal(size=(10, 5)).astype("float32"))
    edges = keras.ops.convert_to_tensor(rng.integers(0, 10, size=(20, 2)).astype("int32"))
    return graph_attention_network()(node_states, edges, 4, 2, 2, 3)


# -- siamese network with contrastive loss (examples/vision/siamese_contrastive.py) -----------

def euclidean_distance(vects):
    import keras

    x, y = vects
    sum_square = keras.ops.sum(keras.ops.square(x - y), axis=1, keepdims=True)
    return keras.ops.sqrt(keras.ops.maximum(sum_square, keras.backend.epsilon()))


@harness.parity_case(
    inputs=lambda rng: [rng.uniform(size=(4, 8, 8, 1)).astype("float32") for _ in range(2)],
    covers=["keras.layers.Lambda"],
    xfail={"*-*-nojit": ("error", "the Lambda's euclidean_distance is not registered: the .keras file cannot name "
                                  "it back", "lambda_function_not_registered")})
def siamese_distance():
    """The example's siamese towers (a shared embedding network) and the Lambda distance, on
    8x8 images with 4 filters."""
    import keras
    from keras import layers

    inp = keras.Input((8, 8, 1))
    x = layers.BatchNormalization()(inp)
    x = layers.AveragePooling2D(pool_size=(2, 2))(layers.Conv2D(4, (3, 3), activation="tanh", padding="same")(x))
    x = layers.Flatten()(x)
    x = layers.Dense(4, activation="tanh")(layers.BatchNormalization()(x))
    embedding_network = keras.Model(inp, x)
    input_1, input_2 = keras.Input((8, 8, 1)), keras.Input((8, 8, 1))
    merge_layer = layers.Lambda(euclidean_distance, output_shape=(1,))(
        [embedding_network(input_1), embedding_network(input_2)])
    normal_layer = layers.BatchNormalization()(merge_layer)
    return keras.Model(inputs=[input_1, input_2], outputs=layers.Dense(1, activation="sigmoid")(normal_layer))
