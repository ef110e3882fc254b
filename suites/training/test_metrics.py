"""The `keras.metrics` classes users compile with, their values compared after each of the
`train` check's four steps (each step is one epoch of one batch, so a metric's state starts
afresh at every step). Each entry is one model head with the metrics of one kind of task;
`at_threshold` gives every prediction exactly 0.5, the thresholds' edge.

Metric values are whole arrays where a metric returns one (F1Score per class). Every divergence
found is declared on its entry with the figures a plain script measured under KERAS_BACKEND=...
Budget: as in test_optimizers.py, torch's jit cells are not run.
"""

import numpy as np

import harness

TORCH_COMPILE_BUDGET = {"torch-*-jit": "budget: the metrics are Keras' own code, the same compiled; "
                                      "torch.compile of train steps runs in suites/models"}
TRAIN = ["build", "outputs", "train"]
BATCH, FEATURES, CLASSES = 16, 6, 4


def metrics_of(task: str) -> list:
    import keras
    from keras import metrics as m

    if task in ("binary", "at_threshold"):
        return [m.BinaryAccuracy(), m.Accuracy(), m.AUC(name="roc_auc"), m.AUC(curve="PR", name="pr_auc"),
                m.Precision(), m.Recall(), m.Precision(thresholds=[0.3, 0.5, 0.7], name="precision_at"),
                m.TruePositives(), m.FalsePositives(), m.TrueNegatives(), m.FalseNegatives(),
                m.PrecisionAtRecall(0.5), m.RecallAtPrecision(0.5), m.SensitivityAtSpecificity(0.5),
                m.SpecificityAtSensitivity(0.5), m.BinaryIoU(), m.BinaryCrossentropy(),
                m.F1Score(threshold=0.5, name="f1"), m.FBetaScore(beta=2.0, threshold=0.5, name="f2")]
    if task == "categorical":
        return [m.CategoricalAccuracy(), m.TopKCategoricalAccuracy(k=2), m.CategoricalCrossentropy(),
                m.KLDivergence(), m.CategoricalHinge(), m.F1Score(average="macro"), m.F1Score(name="f1_per_class"),
                m.FBetaScore(beta=0.5, average="weighted"), m.OneHotIoU(CLASSES, target_class_ids=[0, 1]),
                m.OneHotMeanIoU(CLASSES), m.AUC(multi_label=True, num_labels=CLASSES, name="multi_label_auc"),
                m.Precision(top_k=2, name="precision_top_2"), m.Recall(class_id=1, name="recall_class_1")]
    if task == "sparse":
        return [m.SparseCategoricalAccuracy(), m.SparseTopKCategoricalAccuracy(k=2),
                m.SparseCategoricalCrossentropy(from_logits=True), m.MeanIoU(CLASSES, sparse_y_pred=False),
                m.IoU(CLASSES, target_class_ids=[2], sparse_y_pred=False)]
    return [m.MeanSquaredError(), m.RootMeanSquaredError(), m.MeanAbsoluteError(), m.MeanAbsolutePercentageError(),
            m.MeanSquaredLogarithmicError(), m.CosineSimilarity(), m.LogCoshError(), m.R2Score(),
            m.PearsonCorrelation(), m.ConcordanceCorrelation(), m.Poisson(), m.Hinge(), m.SquaredHinge(),
            keras.metrics.MeanMetricWrapper(keras.losses.huber, name="huber")]


#: task -> (units, activation, loss); "logits": sparse categorical cross-entropy from logits
TASKS = {
    "binary": (1, "sigmoid", "binary_crossentropy"),
    "at_threshold": (1, "sigmoid", "binary_crossentropy"),
    "categorical": (CLASSES, "softmax", "categorical_crossentropy"),
    "sparse": (CLASSES, None, "logits"),
    "regression": (1, None, "mse"),
}


def targets_of(rng, task: str):
    if task in ("binary", "at_threshold"):
        return rng.integers(0, 2, size=(BATCH, 1)).astype("float32")
    if task == "categorical":
        return np.eye(CLASSES, dtype="float32")[rng.integers(0, CLASSES, size=BATCH)]
    if task == "sparse":
        return rng.integers(0, CLASSES, size=(BATCH, 1)).astype("int32")
    return rng.normal(size=(BATCH, 1)).astype("float32")


@harness.parity_case(
    inputs=lambda rng: rng.normal(size=(BATCH, FEATURES)).astype("float32"),
    targets=lambda rng, task: targets_of(rng, task),
    checks=TRAIN, skip=TORCH_COMPILE_BUDGET, params={task: {"task": task} for task in TASKS},
    covers=["keras.metrics." + name for name in (
        "BinaryAccuracy", "Accuracy", "AUC", "Precision", "Recall", "TruePositives", "FalsePositives",
        "TrueNegatives", "FalseNegatives", "PrecisionAtRecall", "RecallAtPrecision", "SensitivityAtSpecificity",
        "SpecificityAtSensitivity", "BinaryIoU", "BinaryCrossentropy", "F1Score", "FBetaScore",
        "CategoricalAccuracy", "TopKCategoricalAccuracy", "CategoricalCrossentropy", "KLDivergence",
        "CategoricalHinge", "OneHotIoU", "OneHotMeanIoU", "SparseCategoricalAccuracy",
        "SparseTopKCategoricalAccuracy", "SparseCategoricalCrossentropy", "MeanIoU", "IoU", "MeanSquaredError",
        "RootMeanSquaredError", "MeanAbsoluteError", "MeanAbsolutePercentageError", "MeanSquaredLogarithmicError",
        "CosineSimilarity", "LogCoshError", "R2Score", "PearsonCorrelation", "ConcordanceCorrelation", "Poisson",
        "Hinge", "SquaredHinge", "MeanMetricWrapper")])
def metrics_by_task(task):
    import keras

    units, activation, loss = TASKS[task]
    # Zero weights give every sample the sigmoid of 0, exactly 0.5: the thresholds' edge (SGD
    # moves them off it after the first step).
    initializer = "zeros" if task == "at_threshold" else "glorot_uniform"
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(
        units, activation=activation, kernel_initializer=initializer)])
    if loss == "logits":
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, metrics=metrics_of(task))
    return model
