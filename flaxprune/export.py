"""A portable ``jax.export`` of a (reduced) model: one folder that runs with jax and numpy alone.

:func:`export_model` writes a folder of three files:

* ``model.jaxexport``: the eval-mode forward (``deterministic=True``) as
  serialized StableHLO (``jax.export.Exported.serialize()``), lowered for
  several platforms at once (by default CPU, CUDA and TPU), with a symbolic
  batch size ``b`` and, where the model allows, a symbolic sequence length
  ``t``. The weights are arguments, not constants: the artifact stays small.
* ``weights.npz``: those arguments, one array each, named by their
  ``'/'``-joined param paths (numpy's format; no pickles).
* ``manifest.json``: what the function takes and returns (names, shapes with
  the symbolic dims named, dtypes), the weights' order, the model config
  (flaxprune's JSON, :mod:`flaxprune.serialization`), the per-layer report,
  the parameter count, the sparsity where known, the platforms and versions.

Running an export needs no flaxprune and no flax, only ``pip install jax
numpy flatbuffers`` (jax reads the serialized module with ``flatbuffers``)::

    import json, jax, numpy as np
    folder = "/tmp/run_export"
    manifest = json.load(open(f"{folder}/manifest.json"))
    exported = jax.export.deserialize(bytearray(open(f"{folder}/model.jaxexport", "rb").read()))
    with np.load(f"{folder}/weights.npz", allow_pickle=False) as npz:
        weights = [npz[w["name"]].view(jax.numpy.dtype(w["dtype"])) for w in manifest["weights"]]
    # inputs in manifest["inputs"] order; an SRU language model takes tokens [b, t] and carry/c [b, layers, d]:
    tokens = np.zeros((2, 16), np.int32)
    carry = np.zeros((2, *manifest["inputs"][1]["shape"][1:]), np.float32)
    logits, carry = exported.call(*weights, tokens, carry)  # outputs in manifest["outputs"] order

:func:`load_exported` is that snippet as a function (it too uses only jax,
numpy and json). An export is written only into a new or empty folder, or,
with ``overwrite``, over an earlier export that holds nothing else, and it
replaces that one only once the new one is complete: no export deletes what
it did not create (the rule :func:`flaxprune.training.checkpoint.check_output`
applies to reduced models).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import pathlib
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxprune.models import MODELS, model_for
from flaxprune.output_folder import check_output_folder
from flaxprune.serialization import config_to_json
from flaxprune.size import report, total_params

__all__ = [
    "DEFAULT_PLATFORMS",
    "FILES",
    "FORMAT",
    "FORMAT_VERSION",
    "PLATFORMS",
    "check_export_output",
    "check_inputs",
    "export_model",
    "export_reduced",
    "export_signature",
    "is_export",
    "load_exported",
    "model_kind",
]

FORMAT = "flaxprune export"  # manifest["format"]: what wrote the folder
FORMAT_VERSION = 1
EXPORTED, WEIGHTS, MANIFEST = "model.jaxexport", "weights.npz", "manifest.json"
FILES = (EXPORTED, WEIGHTS, MANIFEST)  # everything an export folder holds
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")  # lowering needs none of the hardware
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # jax's names; its lowering takes any name, and a typo runs nowhere


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One input or output of the exported function; ``shape`` names its symbolic dims (``'b'``, ``'t'``)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    doc: str


@dataclasses.dataclass(frozen=True)
class Signature:
    """What the exported function takes and returns, and how the Flax model computes it."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    dims: Mapping[str, str]  # symbolic dim -> what it is
    constraints: tuple[str, ...]  # jax.export.symbolic_shape's constraints on them
    forward: Callable[..., tuple[jax.Array, ...]]  # (model, params, *inputs) -> outputs


def _lm_forward(carry_names: Sequence[str]) -> Callable[..., tuple[jax.Array, ...]]:
    def forward(model, params, tokens, *carry):
        logits, new = model.apply({"params": params}, tokens, dict(zip(carry_names, carry)), deterministic=True)
        return (logits, *(new[k] for k in carry_names))

    return forward


def _bert_forward(model, params, input_ids, token_type_ids, attention_mask):
    return (model.apply({"params": params}, input_ids, token_type_ids, attention_mask, deterministic=True),)


def export_signature(config: Any) -> Signature:
    """The exported function's signature for a model config (SRU, word SRU, Transformer-XL or BERT classifier).

    Raises:
      ValueError: for a config of no known model.
    """
    kind = model_kind(config)
    if kind == "bert":
        ids = [Tensor(name, ("b", "t"), "int32", doc) for name, doc in (
            ("input_ids", "token ids"), ("token_type_ids", "segment ids (0 or 1)"),
            ("attention_mask", "1 for real tokens, 0 for padding"))]
        logits = Tensor("logits", ("b", config.num_labels), "float32", "classifier logits")
        dims = {"b": "batch size (>= 1)", "t": f"sequence length (1 <= t <= max_position = {config.max_position})"}
        return Signature(tuple(ids), (logits,), dims, (f"t <= {config.max_position}",), _bert_forward)
    tokens = Tensor("tokens", ("b", "t"), "int32", "token ids")
    logits = Tensor("logits", ("b", "t", config.vocab_size), "float32", "next-token logits")
    dims = {"b": "batch size (>= 1)", "t": "segment length (>= 1)"}
    if kind in ("sru", "word_sru"):  # the word SRU's logits are its adaptive softmax's log-probabilities
        c = Tensor("carry/c", ("b", config.n_layers, config.d_model), "float32", "each layer's state; zeros to start")
        return Signature((tokens, c), (logits, c), dims, (), _lm_forward(["c"]))
    dims["t"] += f"; the memory length mem_len = {config.mem_len} is fixed by the config"
    mems = Tensor("carry/mems", ("b", config.n_layers, config.mem_len, config.d_model),
                  jnp.dtype(config.dtype or config.param_dtype).name, "each layer's last inputs; zeros to start")
    length = Tensor("carry/length", ("b",), "int32", "how many trailing positions of mems are real; 0 to start")
    return Signature((tokens, mems, length), (logits, mems, length), dims, (), _lm_forward(["mems", "length"]))


def model_kind(config: Any) -> str:
    """The model's name in :data:`flaxprune.models.MODELS` (``'sru'``, ``'txl'``, ``'bert'``)."""
    for name, (_, config_cls) in MODELS.items():
        if isinstance(config, config_cls):
            return name
    raise ValueError(f"export_model: {type(config).__name__} is not a model config; accepted: "
                     f"{', '.join(c.__name__ for _, c in MODELS.values())}.")


# ---------------------------------------------------------------------------------------------------------
# The output folder: new, empty, or an earlier export of ours.


def is_export(directory: str | pathlib.Path) -> bool:
    """Whether ``directory`` holds an export written by :func:`export_model`, and nothing else."""
    directory = pathlib.Path(directory)
    try:
        names = {p.name for p in directory.iterdir()}
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT and names <= set(FILES)


def check_export_output(directory: str | pathlib.Path, overwrite: bool = False) -> None:
    """Refuses a folder an export may not be written to; writes nothing.

    A new or empty folder is fine; an earlier export only with ``overwrite``;
    anything else (a reduced model, a run, a folder of other files) never.

    Raises:
      FileExistsError: naming the folder, what is there, and what is accepted.
    """
    check_output_folder(directory, overwrite, what="an export", is_ours=is_export)


def _remove_export(directory: pathlib.Path) -> None:
    """Deletes an export folder of ours, file by file (an unknown file would stop ``rmdir``, never be deleted)."""
    for name in FILES:
        (directory / name).unlink(missing_ok=True)
    directory.rmdir()


def _write(directory: pathlib.Path, files: Mapping[str, bytes]) -> None:
    """Writes ``files`` beside ``directory`` (the manifest last), then renames the complete folder into place."""
    staging = directory.with_name(f"{directory.name}.export-new")
    if staging.exists():
        if not (staging.is_dir() and {p.name for p in staging.iterdir()} <= set(FILES)):
            raise FileExistsError(f"{staging} is in the way of writing {directory}; move it, then rerun.")
        shutil.rmtree(staging)  # our own leftover from an interrupted export
    staging.mkdir(parents=True)
    for name in sorted(files, key=lambda n: n == MANIFEST):
        (staging / name).write_bytes(files[name])
    if directory.exists() and any(directory.iterdir()):  # an earlier export, as check_export_output allowed
        old = directory.with_name(f"{directory.name}.export-old")
        if old.exists():
            if not is_export(old):
                raise FileExistsError(f"{old} is in the way of replacing {directory}; move it, then rerun.")
            _remove_export(old)  # our own leftover from an interrupted overwrite
        directory.rename(old)
        staging.rename(directory)
        _remove_export(old)
    else:
        if directory.exists():
            directory.rmdir()  # empty
        staging.rename(directory)


# ---------------------------------------------------------------------------------------------------------
# Export.


def _require_serialization() -> None:
    if importlib.util.find_spec("flatbuffers") is None:
        raise ModuleNotFoundError(
            "jax serializes an export with the 'flatbuffers' package, which is not installed: "
            "pip install flatbuffers",
            name="flatbuffers",
        )


def _lower(fn: Callable, specs: Sequence[Any], platforms: Sequence[str]) -> tuple[Any, dict[str, str]]:
    """``(exported, dropped)``: ``fn`` lowered for every platform of ``platforms`` that lowers; why the others not."""
    try:
        return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(*specs), {}
    except Exception:  # one platform's lowering rule failed: find which, keep the others
        pass
    dropped = {}
    for platform in platforms:
        try:
            jax.export.export(jax.jit(fn), platforms=(platform,))(*specs)
        except Exception as e:  # any lowering failure drops the platform, named in the manifest
            dropped[platform] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    kept = [p for p in platforms if p not in dropped]
    if not kept:
        raise ValueError(f"export_model: the model lowers for none of the platforms {list(platforms)}: {dropped}")
    return jax.export.export(jax.jit(fn), platforms=tuple(kept))(*specs), dropped


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value.item() if isinstance(value, (np.integer, np.floating, np.bool_)) else value


def export_model(
    params: Any,
    config: Any,
    directory: str | pathlib.Path,
    *,
    overwrite: bool = False,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    sparsity: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Exports the model ``model_for(config)`` with ``params`` in eval mode to ``directory``.

    Args:
      params: the model's params (a reduced model's, from :func:`flaxprune.shrink`, or gated ones).
      config: its model config (an ``SRUConfig``, ``TransformerXLConfig`` or ``BertConfig``).
      directory: a new or empty folder, or with ``overwrite`` an earlier export.
      overwrite: replace an earlier export in ``directory`` (nothing else is ever replaced).
      platforms: to lower for; one that fails to lower is dropped, named in ``dropped_platforms``.
      sparsity: what is known of the sparsity (a run summary's ``hard_sparsity``, ...); None: unknown.
      source: where the model came from, for the manifest.

    Returns:
      The manifest written.

    Raises:
      FileExistsError: from :func:`check_export_output`, before anything is computed or written.
      ModuleNotFoundError: when ``flatbuffers``, which jax's serialization needs, is not installed.
      ValueError: for a config of no known model, or params that do not fit it.
    """
    from flaxprune import __version__  # the package is imported by now; at the top it would be circular

    directory = pathlib.Path(directory).absolute()
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
        raise ValueError(f"export_model: platforms={list(platforms)} must be some of {list(PLATFORMS)}.")
    check_export_output(directory, overwrite)
    _require_serialization()
    signature = export_signature(config)
    model = model_for(config)

    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(jax.device_get(params))
    names = [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in paths_leaves]
    leaves = [np.asarray(leaf) for _, leaf in paths_leaves]
    n = len(leaves)

    def fn(*args):  # weights, then inputs; the outputs as a flat tuple
        return tuple(signature.forward(model, jax.tree.unflatten(treedef, args[:n]), *args[n:]))

    dims = list(signature.dims)
    symbols = dict(zip(dims, jax.export.symbolic_shape(", ".join(dims), constraints=signature.constraints)))
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves]
    specs += [jax.ShapeDtypeStruct(tuple(symbols.get(d, d) for d in x.shape), x.dtype) for x in signature.inputs]
    try:  # trace once first: params that do not fit the model are an error, not a platform to drop
        jax.eval_shape(fn, *specs)
    except Exception as e:  # flax has its own error types for a param of the wrong shape or name
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"export_model: cannot trace the {type(config).__name__} with these params: {first}") from e
    exported, dropped = _lower(fn, specs, platforms)

    buffer = io.BytesIO()
    np.savez(buffer, **dict(zip(names, leaves)))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "jax_version": jax.__version__,
        "flaxprune_version": __version__,
        "model": model_kind(config),
        "model_class": type(model).__name__,
        "source": source,
        "platforms": list(exported.platforms),
        "dropped_platforms": dropped,
        "files": {"exported": EXPORTED, "weights": WEIGHTS},
        "call": "exported.call(*weights, *inputs) -> outputs, each in this manifest's order",
        "symbolic_dims": dict(signature.dims),
        "constraints": list(signature.constraints),
        "inputs": [dataclasses.asdict(x) | {"shape": list(x.shape)} for x in signature.inputs],
        "outputs": [dataclasses.asdict(x) | {"shape": list(x.shape)} for x in signature.outputs],
        "weights": [{"name": k, "shape": list(a.shape), "dtype": a.dtype.name} for k, a in zip(names, leaves)],
        "total_params": total_params(leaves),
        "sparsity": dict(sparsity) if sparsity is not None else None,
        "layers": [{k: _jsonable(v) for k, v in dataclasses.asdict(r).items()} for r in report(params, config)],
        "model_config": json.loads(config_to_json(config)),
    }
    _write(directory, {
        EXPORTED: bytes(exported.serialize()),
        WEIGHTS: buffer.getvalue(),
        MANIFEST: (json.dumps(manifest, indent=1) + "\n").encode("utf-8"),
    })
    return manifest


# ---------------------------------------------------------------------------------------------------------
# Loading: jax, numpy and json only, as the module docstring's snippet.


def load_exported(directory: str | pathlib.Path) -> Callable[..., tuple[jax.Array, ...]]:
    """``f(*inputs) -> outputs`` of an export folder (inputs and outputs in its manifest's order).

    The module docstring's standalone snippet as a function: only jax,
    numpy and json, so it runs where flaxprune and flax are not installed.
    ``f.manifest`` is the parsed manifest.

    Raises:
      FileNotFoundError: if ``directory`` holds no export.
      ValueError: for a manifest of another format or version.
    """
    directory = pathlib.Path(directory)
    if not (directory / MANIFEST).is_file():
        raise FileNotFoundError(f"load_exported: no {MANIFEST} in {directory.absolute()}: not a flaxprune export.")
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"load_exported: {directory / MANIFEST} is format {manifest.get('format')!r} version "
            f"{manifest.get('format_version')!r}; this flaxprune reads {FORMAT!r} version {FORMAT_VERSION}."
        )
    exported = jax.export.deserialize(bytearray((directory / EXPORTED).read_bytes()))
    with np.load(directory / WEIGHTS, allow_pickle=False) as npz:
        weights = [jnp.asarray(npz[w["name"]].view(jnp.dtype(w["dtype"]))) for w in manifest["weights"]]
    call = jax.jit(exported.call)

    def f(*inputs):
        check_inputs(manifest, inputs)
        return call(*weights, *inputs)

    f.manifest = manifest
    return f


def check_inputs(manifest: Mapping[str, Any], inputs: Sequence[Any]) -> None:
    """Checks ``inputs`` against the manifest's shapes and ``dim <= n`` constraints (one value per dim).

    Raises:
      ValueError: naming the input and the shapes (jax's own error says only that shapes did not refine).
    """
    specs = manifest["inputs"]
    if len(inputs) != len(specs):
        names = [x["name"] for x in specs]
        raise ValueError(f"exported model: {len(inputs)} inputs given, expected {len(specs)}: {names}.")
    bound: dict[str, int] = {}
    for spec, x in zip(specs, inputs):
        shape = tuple(np.shape(x))
        ok = len(shape) == len(spec["shape"])
        for want, got in zip(spec["shape"], shape):
            ok = ok and (bound.setdefault(want, got) == got if isinstance(want, str) else want == got)
        if not ok:
            raise ValueError(
                f"exported model: input {spec['name']} has shape {list(shape)}, expected {spec['shape']} "
                f"(symbolic dims: {manifest['symbolic_dims']}; so far {bound})."
            )
    for constraint in manifest.get("constraints", ()):
        name, op, limit = constraint.split()
        if op == "<=" and name in bound and bound[name] > int(limit):
            raise ValueError(f"exported model: {name} = {bound[name]} breaks the constraint {constraint} "
                             f"({manifest['symbolic_dims'].get(name, name)}).")


# ---------------------------------------------------------------------------------------------------------
# A saved reduced model (the ``flaxprune export`` command).


def export_reduced(
    path: str | pathlib.Path, output: str | pathlib.Path, *, overwrite: bool = False, run_only: bool = False
) -> dict[str, Any]:
    """Exports a run's reduced model (``<run>/reduced``), or (unless ``run_only``) a reduced-model folder.

    The source, the output and the serialization's dependency are all checked
    before anything is written; a run's ``summary.json`` gives the sparsity.

    Returns:
      The manifest written.

    Raises:
      FileNotFoundError: a missing path, or a run without a reduced model.
      ValueError: a path that is neither a run directory nor a reduced model.
      FileExistsError: an output that may not be written (:func:`check_export_output`).
    """
    # The run directory and the reduced-model format are the training package's; export_model and
    # load_exported need none of it (nor orbax), so it is imported here only.
    from flaxprune.training.checkpoint import is_reduced_model, load_reduced
    from flaxprune.training.run_dir import RunFiles

    path = pathlib.Path(path).absolute()
    run = RunFiles(path)
    if not path.is_dir():
        what = "a run directory" if run_only else "a run directory or a reduced model"
        raise FileNotFoundError(f"{path} does not exist or is not a folder: expected {what}.")
    is_run = run.config.is_file() or run.checkpoints.is_dir()
    if is_run:
        if not (run.reduced.is_dir() and is_reduced_model(run.reduced)):
            raise FileNotFoundError(
                f"run {path} has no reduced model in {run.reduced}: a run writes it when it ends with pruning "
                f"on; flaxprune shrink --workdir={path} --output=DIR makes one from its newest checkpoint."
            )
        source = run.reduced
    elif run_only:
        raise FileNotFoundError(f"{run.config} is missing: {path} is not a flaxprune run directory.")
    elif is_reduced_model(path):
        source = path
    else:
        raise ValueError(
            f"{path} is neither a flaxprune run directory nor a reduced model (what flaxprune shrink writes)."
        )
    check_export_output(output, overwrite)
    _require_serialization()
    sparsity = None
    if is_run and run.summary.is_file():
        summary = json.loads(run.summary.read_text(encoding="utf-8"))
        keys = ("hard_sparsity", "sparsity_basis", "target", "prunable_params", "params", "reduced_params")
        sparsity = {k: summary[k] for k in keys if k in summary} or None
    _, params, config = load_reduced(source)
    return export_model(params, config, output, overwrite=overwrite, sparsity=sparsity, source=str(source))
