"""From an exception raised in a cell to a status and a hint that names the fix.

The hints are the migration guide's (Keras 2 to Keras 3) fixes. Classification runs in the
worker, where the exception object is; it needs only the exception's type names and message.
"""

from __future__ import annotations

import dataclasses
import os
import re
import traceback

from harness.statuses import COMPILE_ERROR, ERROR

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # Keras colours its error messages
MESSAGE_CHARS = 4000
TRACEBACK_CHARS = 6000

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
    phases: tuple[str, ...] = ()  # only for failures in these phases (all when empty)

    def matches(self, type_names: list[str], text: str, check: str = "", tb: str = "",
                phase: str = "") -> re.Match | bool:
        """False, or True (a match on types or traceback), or the message's regex match,
        whose named groups fill the hint's `{placeholders}`."""
        if (self.checks and check not in self.checks) or (self.phases and phase not in self.phases):
            return False
        if self.types and not any(t in type_names for t in self.types):
            return False
        found = True
        if self.message is not None:
            found = re.search(self.message, text, re.S)
            if not found:
                return False
        if self.traceback is not None and not re.search(self.traceback, tb):
            return False
        return found if (self.types or self.message or self.traceback) else False

    def hint_for(self, found: re.Match | bool, backend: str) -> str:
        """The hint with the names the message gave (`{arg}`, `{layer}`, `{op}`) and the
        backend's own tools (`{exporter}`)."""
        groups = {k: v for k, v in found.groupdict().items() if v} if isinstance(found, re.Match) else {}
        op = next((v for k, v in groups.items() if k.startswith("op")), None)
        names = {"backend": backend or "this backend", "exporter": ONNX_EXPORTERS.get(backend, "the ONNX exporter"),
                 **groups, "on_op": f" on the op {op}" if op else ""}
        return self.hint.format_map(names)


ONNX_EXPORTERS = {"tensorflow": "tf2onnx", "torch": "torch.onnx with onnxscript", "jax": "jax2onnx"}


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
        "loss_not_scalar",
        "the loss is not a scalar (a loss with reduction=None, or a compute_loss that returns "
        "per-sample values): JAX and torch take gradients of scalars only, while TensorFlow's "
        "tape silently differentiates the sum. Give the loss a reduction "
        "('sum_over_batch_size', the default, or 'sum'), or reduce it in compute_loss",
        message=r"Gradient only defined for scalar-output functions|"
        r"grad can be implicitly created only for scalar outputs",
        checks=("train",),
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
        "layer_created_in_call",
        "a Keras layer ({layer}) is created inside call(): torch.compile cannot trace a layer's "
        "construction (nor can Keras track its weights). Create it once in __init__() or "
        "build() and only call it in call() (keras.layers.concatenate(...) in call() -> "
        "self.concat = keras.layers.Concatenate() in __init__, or keras.ops.concatenate)",
        message=r"'(?P<layer>\w+)' object has no attribute '_buffers'",
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
        "non_tensor_positional_argument",
        "a layer was called with a non-tensor (a Python number, a flag) as a positional argument, which "
        "Keras 3 refuses: pass it by keyword, layer(x, index=3), with call(self, x, index) unchanged",
        message=r"Only input tensors may be passed as positional arguments",
    ),
    Rule(
        "deeply_nested_inputs",
        "keras.Model refuses inputs nested more than one level deep: pass a flat dict, "
        "list or tuple of keras.Input tensors",
        message=r"all values in the dict must be KerasTensors|inputs.*(nested|deeply)",
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
        "lambda_function_not_registered",
        "the .keras file names the Lambda layer's function '{function}', which load_model cannot "
        "find: decorate it with @keras.saving.register_keras_serializable() (and import it "
        "before loading), or pass custom_objects={{'{function}': {function}}}",
        message=r"Could not locate function '(?P<function>[\w.]+)'",
    ),
    Rule(
        "lambda_python_lambda",
        "a Lambda layer wraps a Python lambda, which load_model refuses in safe mode: make it a "
        "named function decorated with @keras.saving.register_keras_serializable(), a custom "
        "layer, or load files you trust with safe_mode=False",
        message=r"is a Python lambda\. This carries a potential risk",
    ),
    Rule(
        "init_without_kwargs",
        "{layer}.__init__() does not accept '{arg}', which get_config() returns (Layer.get_config "
        "adds name, trainable and dtype): take **kwargs in __init__ and pass them on, "
        "def __init__(self, ..., **kwargs): super().__init__(**kwargs)",
        message=r"(?P<layer>\w+)\.__init__\(\) got an unexpected keyword argument '(?P<arg>\w+)'",
    ),
    Rule(
        "config_missing_argument",
        "{layer}.__init__() needs '{arg}', which get_config() does not return: add every "
        "constructor argument to get_config() (config.update({{'{arg}': self.{arg}}})), as an "
        "array's list or a layer's serialized config where it is not a plain value",
        message=r"(?P<layer>\w+)\.__init__\(\) missing \d+ required (positional|keyword-only) "
        r"arguments?: '(?P<arg>\w+)'",
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
        "export_symbolic_shapes",
        "model.export traced the model with symbolic dimensions for what its inputs leave unknown "
        "(jax2tf gives each input's dimensions their own symbols, so two sequence inputs get "
        "independent lengths), and the model needs them equal: pass input_signature= with those "
        "dimensions fixed, e.g. [keras.InputSpec(shape=(None, 16, 4)), keras.InputSpec(shape=(None, 16, 4))], "
        "or give keras.Input the length",
        message=r"(incompatible shapes|[Ss]hapes? .{0,40}(must|should) (match|be equal)|Dimensions must be equal)"
        r"[^\n]{0,200}\([^()\n]*\b[a-z_][a-z_0-9]*\b[^()\n]*\)",
        checks=("export",),
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
        "onnx_export",
        "the ONNX route failed ({exporter}, used by model.export(format='onnx') under {backend}){on_op}: "
        "the SavedModel route (format='tf_saved_model') may still work; otherwise replace what the "
        "exporter cannot convert with ops it supports, or raise the opset (onnx_program options), and "
        "report it to the exporter's project",
        # The op, only where the message names it as the one that failed (a graph it prints
        # names every op).
        message=r"^.*?(?:No Op registered for (?P<op>\w+)|implementation for (?P<op2>\w+)\(|"
        r"Unsupported FX nodes: \{'call_function': \['(?P<op3>[\w.]+)'|(?P<op4>aten::\w+)[^\n]{0,40}not supported|"
        r"op_type[=:] ?'?(?P<op5>\w+))|.",
        checks=("export",),
        phases=("export_onnx", "onnxruntime"),
    ),
    Rule(
        "export_failed",
        "model.export(path, format='tf_saved_model') failed in this backend (under JAX it "
        "goes through jax2tf, under torch through torch_xla): export from a backend where it "
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
    exception: str | None
    message: str
    hint: str | None = None
    traceback: str | None = None
    root_cause: str | None = None  # the innermost error of the chain, in full
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


def exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception, then what it was raised from or while handling, innermost last (as
    Python's own traceback follows them: `raise ... from None` ends the chain)."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return chain


def clean(text: str) -> str:
    """An exception's text as a report shows it: no colour codes, no whole arrays."""
    return summarize_arrays(ANSI_ESCAPE.sub("", text).strip())


#: A value as NumPy, TensorFlow, JAX and torch print an array's elements: a number, nan, inf,
#: a boolean, or the printers' own ellipsis for what they leave out.
VALUE = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+|nan|inf)|True|False"
#: A printed array: brackets holding only such values and separators. torch wraps it in
#: `tensor(...)`, TensorFlow in `tf.Tensor(..., shape=..., dtype=...)`, JAX in `Array(...)`; the
#: wrappers are short, the brackets are what grows.
PRINTED_ARRAY = re.compile(r"\[(?:[\[\]\s,]|\.\.\.|" + VALUE + r")*\]")
NUMBER = re.compile(VALUE)
ARRAY_CHARS = 120


def summarize_arrays(text: str) -> str:
    """Replace each printed array longer than ARRAY_CHARS by its first few values and how many
    were printed: a message that prints a model's whole input stays readable and small."""

    def summary(match: re.Match) -> str:
        printed = match.group(0)
        values = NUMBER.findall(printed)
        if len(printed) <= ARRAY_CHARS or len(values) < 8:
            return printed
        depth = len(printed) - len(printed.lstrip("["))
        elided = ", more left out by the printer" if "..." in printed else ""
        return f"[{depth}-d array, {len(values)} values printed{elided}: {', '.join(values[:4])}, ...]"

    return PRINTED_ARRAY.sub(summary, text)


def root_cause(exc: BaseException) -> str:
    """The innermost exception of the chain as 'Type: message', in full: Keras wraps a layer's
    own error in its deserialization and call-context messages, and the cause comes last."""
    inner = exception_chain(exc)[-1]
    text = f"{type(inner).__name__}: {clean(str(inner)) or repr(inner)}"
    unformatted = error_being_built(inner)
    if unformatted is not None:
        return f"{type(unformatted).__name__} (JAX could not write its message: {text})"
    return text


def error_being_built(exc: BaseException) -> BaseException | None:
    """The JAX error whose constructor raised `exc`: JAX 0.10's tracer errors fail to format
    their message under Keras' symbolic build (`'str' object has no attribute '_error_repr'`),
    so the error that names the cause never exists but in its half-built `self`."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or not tb.tb_frame.f_code.co_filename.endswith("jax/_src/errors.py"):
        return None
    built = tb.tb_frame.f_locals.get("self")
    return built if isinstance(built, BaseException) else None


def find_rule(exc: BaseException, check: str = "", tb: str = "", phase: str = "") -> tuple[Rule, object] | None:
    """The first rule that matches the exception or anything in its chain, with its match."""
    chain = exception_chain(exc)
    names = [name for e in chain for name in type_names(e)]
    text = "\n".join(ANSI_ESCAPE.sub("", str(e)) for e in chain)
    for rule in RULES:
        found = rule.matches(names, text, check, tb, phase)
        if found:
            return rule, found
    return None


def describe(exc: BaseException, *, check: str, phase: str, jit: bool,
             jit_only: bool | None = None) -> tuple[str, Failure]:
    """Classify `exc`: returns (status, failure record).

    `jit_only` is True when the same step was re-run without jit in this cell and passed:
    that makes it a compile error whatever the exception says.
    """
    tb = "".join(traceback.format_exception(exc))
    rule, found = find_rule(exc, check, tb, phase) or (None, None)
    message = clean(str(exc)) or repr(exc)
    compiled_step = jit and check not in ("save", "export")  # files do not depend on jit
    compile_error = compiled_step and (jit_only or (jit_only is None and rule is not None and rule.compile_failure))
    if jit_only is False:
        compile_error = False
    failure = Failure(
        check=check,
        phase=phase,
        kind=rule.name if rule else ("compile" if compile_error else "exception"),
        exception=f"{type(exc).__module__}.{type(exc).__qualname__}",
        message=message[:MESSAGE_CHARS],
        root_cause=root_cause(exc)[:MESSAGE_CHARS],
        hint=rule.hint_for(found, os.environ.get("KERAS_BACKEND", "")) if rule else (
            JIT_OFF_HINT.capitalize() + " (it fails only with jit on)" if compile_error else None),
        traceback=summarize_arrays(tb)[-TRACEBACK_CHARS:],
    )
    if rule is not None and rule.name == "xla_unsupported_ops":
        failure.extra["unsupported_ops"] = unsupported_ops("\n".join(str(e) for e in exception_chain(exc)))
    return (COMPILE_ERROR if compile_error else ERROR), failure
