"""Writes this folder's files (run once, under TensorFlow): a model saved the Keras 2 way as
a TF SavedModel, and the same model as a `.keras` file, for pitfall 3 of the migration suite.

    KERAS_BACKEND=tensorflow python suites/migration/data/make_data.py
"""

import os

import keras

HERE = os.path.dirname(os.path.abspath(__file__))

keras.utils.set_random_seed(7)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="tanh", name="dense")],
                         name="keras2_model")
model.save(os.path.join(HERE, "keras2_model.keras"))
model.export(os.path.join(HERE, "keras2_savedmodel"), format="tf_saved_model")
