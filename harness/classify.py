"""From an exception raised in a cell to a status and a hint that names the fix.

The hints are the migration guide's (Keras 2 to Keras 3) fixes. Classification runs in the
worker, where the exception object is; it needs only the exception's type names and message.
"""

from __future__ import annotations

import dataclasses
import re
import traceback

from harness.statuses import COMPILE_ERROR, ERROR

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # Keras colours its error messages

JIT_OFF_HINT = (
    "compile it without jit on this backend: model.compile(..., jit_compile=False) "
    "or model.jit_compile = False"
)


UNTRACKED_STATE_HINT = (
    "Keras 3 tracks only keras.Variable: create weights with self.add_weight(...) or "
    "keras.Variable(...) in __init__() or build(), never as a tf.Variable, torch.nn.Parameter "
    "or raw array attribute, and never in call()")


@dataclasses.dataclass(frozen=True)
class Rule:
    """Matches an exception by the names in its type's MRO, a regex on its message and/or a
    regex on its formatted traceback (for errors another error hides: JAX 0.10's tracer
    errors fail to format under Keras' symbolic build, leaving only their source line)."""

    name: str
    hint: str
    types: tuple[str, ...] = ()
    message: str | None = None
    traceback: str | None = None
    compile_failure: bool = False  # a failure of a jit compiler (XLA, tracing, inductor)
    checks: tuple[str, ...] = ()  # only for failures of these checks (all when empty)

    def matches(self, type_names: list[str], text: str, check: str = "", tb: str = "") -> bool:
        if self.checks and check not in self.checks:
            return False
        if self.types and not any(t in type_names for t in self.types):
            return False
        if self.message is not None and not re.search(self.message, text, re.S):
            return False
        if self.traceback is not None and not re.search(self.traceback, tb):
            return False
        return bool(self.types or self.message or self.traceback)


SHAPE_ERROR = (r"Dimensions must be equal|incompatible shapes|must match the size of tensor|"
               r"shapes .* (are )?incompatible|Incompatible shapes")

RULES = (
    Rule(
        "targets_do_not_fit",
        "the case's targets do not fit the model's outputs for its loss: change targets= "
        "(same structure and shapes as the outputs) or loss=",
        message=SHAPE_ERROR + r"|Arguments `target` and `output` must have the same|"
        r"logits and labels must have the same",
        checks=("train",),
    ),
    Rule(
        "xla_unsupported_ops",
        "XLA cannot compile these ops (tf.strings.* and other host-only ops); "
        + JIT_OFF_HINT + ", or replace the ops with keras.ops equivalents",
        message=r"Detected unsupported operations when trying to compile graph|"
        r"No registered '\w+' OpKernel for XLA_",
        compile_failure=True,
    ),
    Rule(
        "python_bool_on_tensor",
        "Python control flow on a tensor inside call(): Keras 3 does not run autograph on "
        "call(). Use keras.ops.cond / keras.ops.where (or decorate call() with @tf.function "
        "on TensorFlow only)",
        types=("OperatorNotAllowedInGraphError", "TracerBoolConversionError"),
    ),
    Rule(
        "python_bool_on_tensor",
        "Python control flow on a tensor inside call(): Keras 3 does not run autograph on "
        "call(). Use keras.ops.cond / keras.ops.where",
        message=r"as a Python `bool` is not allowed|Attempted boolean conversion of traced array|"
        r"Data-dependent jumps|data-dependent control flow",
    ),
    Rule(
        "python_bool_on_tensor",
        "Python control flow on a tensor inside call() (under JAX the error is hidden behind "
        "an AttributeError from JAX's own error message): use keras.ops.cond / keras.ops.where",
        types=("AttributeError",),
        traceback=r"Attempted boolean conversion of",
    ),
    Rule(
        "tf_or_numpy_op_in_call",
        "call() runs TensorFlow (tf.*) or NumPy ops on this backend's tensors: they work only "
        "under TensorFlow (or eagerly). Use keras.ops: tf.abs -> keras.ops.absolute, tf.gather "
        "-> keras.ops.take, tf.reduce_mean -> keras.ops.mean, tf.nn.l2_normalize -> "
        "keras.utils.normalize, x.numpy() -> keras.ops.convert_to_numpy",
        # JAX's TracerArrayConversionError; its message line, or (masked) the line after it.
        traceback=r"The numpy\.ndarray conversion method __array__\(\) was called on|"
        r"jax/_src/errors\.py.*\n\s*f\"\{tracer\._error_repr\(\)\}\{tracer\._origin_msg\(\)\}\"\)",
    ),
    Rule(
        "tf_or_numpy_op_in_call",
        "call() returned a TensorFlow or NumPy value instead of this backend's tensor: tf.* "
        "and np.* ops work only under TensorFlow. Use keras.ops: tf.abs -> keras.ops.absolute, "
        "tf.gather -> keras.ops.take, tf.reduce_mean -> keras.ops.mean, tf.nn.l2_normalize -> "
        "keras.utils.normalize",
        message=r"All operation outputs must be tensors.*returned a non-tensor",
    ),
    Rule(
        "train_step_per_backend",
        "a TensorFlow-style train_step(self, data) does not run here: under JAX Keras calls "
        "train_step(self, state, data) and expects (logs, state) back; under torch there is no "
        "tf.GradientTape (use loss.backward()). Write one train_step per backend as the "
        "migration guide shows, or override only compute_loss()",
        message=r"train_step\(\) takes 2 positional arguments but 3 were given|GradientTape|"
        r"Cannot convert the argument `type_value`: tensor\(",
        checks=("train",),
    ),
    Rule(
        "jax_tracer_leak",
        "a traced value was turned into a concrete Python/NumPy value inside a compiled "
        "function; keep it a tensor and use keras.ops, or " + JIT_OFF_HINT,
        types=("ConcretizationTypeError", "TracerArrayConversionError",
               "TracerIntegerConversionError", "UnexpectedTracerError"),
        compile_failure=True,
    ),
    Rule(
        "torch_custom_op_without_fake",
        "torch.compile traces with fake tensors, and this custom op has no fake "
        "implementation: add one with @my_op.register_fake (shapes and dtypes only), "
        "or " + JIT_OFF_HINT,
        message=r"no fake impl registered|register_fake",
        compile_failure=True,
    ),
    Rule(
        "torch_compile",
        "torch.compile (dynamo/inductor) failed on this model; " + JIT_OFF_HINT
        + ", or rewrite the op it names",
        types=("BackendCompilerFailed", "InductorError", "TorchRuntimeError", "Unsupported",
               "UserError", "InternalTorchDynamoError", "TorchDynamoException"),
        compile_failure=True,
    ),
    Rule(
        "keras_tensor_in_tf_op",
        "a TensorFlow op was called on a KerasTensor while building a functional model: "
        "use the keras.ops equivalent (tf.squeeze -> keras.ops.squeeze, tf.abs -> "
        "keras.ops.absolute, tf.gather -> keras.ops.take, ...)",
        message=r"A KerasTensor cannot be used as input to a TensorFlow function",
    ),
    Rule(
        "savedmodel_via_save",
        "model.save() no longer writes a TF SavedModel: use model.export(path) for a "
        "SavedModel, or save to a path ending in .keras",
        message=r"Invalid filepath extension for saving",
    ),
    Rule(
        "load_savedmodel",
        "keras.models.load_model() no longer reads a SavedModel: reload it as a layer with "
        "keras.layers.TFSMLayer(path, call_endpoint='serving_default')",
        message=r"File format not supported: filepath=",
    ),
    Rule(
        "deeply_nested_inputs",
        "keras.Model refuses inputs nested more than one level deep: pass a flat dict, "
        "list or tuple of keras.Input tensors",
        message=r"all values in the dict must be KerasTensors|"
        r"inputs.*(nested|deeply)|Only input tensors may be passed as positional",
    ),
    Rule(
        "unbuilt_state",
        "state must be created in __init__() or build(), not in call(): implement "
        "build(self, input_shape) that creates the weights and builds every sublayer",
        message=r"looks like it has unbuilt state|You cannot add new elements of state|"
        r"Cannot add (a )?(new )?(variable|weight).*(call|StatelessScope)|"
        r"You are attempting to create a variable in a (JAX )?(stateless|traced)",
    ),
    Rule(
        "none_in_nested_args",
        "None is not allowed inside nested call() arguments: make it a separate optional "
        "argument, e.g. def call(self, foo, baz=None)",
        message=r"None.*(nested|structure)|(nested|structure).*None",
    ),
    Rule(
        "not_rebuildable",
        "the saved file cannot rebuild this layer: implement get_config() returning every "
        "constructor argument, and register the class with "
        "@keras.saving.register_keras_serializable() (or pass custom_objects= to load_model)",
        message=r"missing \d+ required (positional|keyword-only) argument|Could not locate class|"
        r"Unknown layer|could not be deserialized properly|get_config",
    ),
    Rule(
        "inputs_do_not_fit",
        "the case's inputs do not fit the model: change the shapes or dtypes in the case's "
        "inputs= (or the model's keras.Input)",
        message=r"is incompatible with the layer|expected shape=|mat1 and mat2 shapes cannot be "
        r"multiplied|" + SHAPE_ERROR,
    ),
    Rule(
        "removed_api",
        "this API was removed in Keras 3 (ThresholdedReLU -> ReLU(threshold=...); "
        "LocallyConnected*, RandomFourierFeatures, RadialConstraint: copy the implementation "
        "into your code; symbolic add_loss, layer metrics/dynamic, RNN constants/time_major "
        "and reset_metrics are gone)",
        message=r"has no attribute '(ThresholdedReLU|LocallyConnected1D|LocallyConnected2D|"
        r"RandomFourierFeatures|RadialConstraint)'|unexpected keyword argument '(constants|"
        r"time_major|reset_metrics|dynamic)'|Unrecognized keyword arguments passed to \w+: "
        r"\{'(constants|time_major|dynamic)'",
    ),
    Rule(
        "export_failed",
        "model.export(path, format='tf_saved_model') failed in this backend (under JAX it "
        "goes through jax2tf, under torch through torch.export): export from a backend where it "
        "works, or pass input_signature=; the exception names what could not be traced",
        message=r".",
        checks=("export",),
    ),
)


@dataclasses.dataclass
class Failure:
    """What went wrong in a cell: the `failure` record of the report."""

    check: str
    phase: str
    kind: str
    exception: str
    message: str
    hint: str | None = None
    traceback: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        record = dataclasses.asdict(self)
        extra = record.pop("extra")
        record.update(extra)
        return record


def type_names(exc: BaseException) -> list[str]:
    return [t.__name__ for t in type(exc).__mro__]


def unsupported_ops(text: str) -> list[str]:
    """Op names from an XLA 'Detected unsupported operations' message, in order, once each."""
    names = re.findall(r"No registered '(\w+)' OpKernel for XLA_", text)
    names += re.findall(r"^\s*(\w+) \(No registered", text, re.M)
    return list(dict.fromkeys(names))


def find_rule(exc: BaseException, check: str = "", tb: str = "") -> Rule | None:
    names = type_names(exc)
    text = f"{exc}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        text += f"\n{cause}"
        names += type_names(cause)
    for rule in RULES:
        if rule.matches(names, text, check, tb):
            return rule
    return None


def describe(exc: BaseException, *, check: str, phase: str, jit: bool,
             jit_only: bool | None = None) -> tuple[str, Failure]:
    """Classify `exc`: returns (status, failure record).

    `jit_only` is True when the same step was re-run without jit in this cell and passed:
    that makes it a compile error whatever the exception says.
    """
    tb = "".join(traceback.format_exception(exc))
    rule = find_rule(exc, check, tb)
    message = ANSI_ESCAPE.sub("", str(exc)).strip() or repr(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None:  # Keras re-raises with its own wording; keep the original's too
        message += f"\ncaused by {type(cause).__name__}: {ANSI_ESCAPE.sub('', str(cause)).strip()[:1500]}"
    compiled_step = jit and check not in ("save", "export")  # files do not depend on jit
    compile_error = compiled_step and (jit_only or (jit_only is None and rule is not None and rule.compile_failure))
    if jit_only is False:
        compile_error = False
    failure = Failure(
        check=check,
        phase=phase,
        kind=rule.name if rule else ("compile" if compile_error else "exception"),
        exception=f"{type(exc).__module__}.{type(exc).__qualname__}",
        message=message[:4000],
        hint=rule.hint if rule else (JIT_OFF_HINT.capitalize() + " (it fails only with jit on)"
                                     if compile_error else None),
        traceback=tb[-6000:],
    )
    if rule is not None and rule.name == "xla_unsupported_ops":
        failure.extra["unsupported_ops"] = unsupported_ops(message)
    return (COMPILE_ERROR if compile_error else ERROR), failure
