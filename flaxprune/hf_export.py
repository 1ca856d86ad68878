"""Writing a reduced BERT classifier as an HF-style folder: safetensors and JSON that any framework can read.

:func:`export_hf` writes a (shrunk) :class:`~flaxprune.models.bert.BertClassifier` as the folder that
``transformers``' ``save_pretrained`` writes for ``BertForSequenceClassification``, except where pruning
changed a shape: ``model.safetensors`` (every tensor under its PyTorch name, a pruned projection as a
``factored`` pair or its bias alone), ``config.json`` (HF's ``BertConfig`` fields and a ``flaxprune`` block
that says, per layer and projection, the kind and the kept rank), a ``README.md`` and the tokenizer's files.
:mod:`flaxprune.hf_format` defines that folder, and reads it back (:func:`load_hf`, re-exported here with
the format's names).

:func:`export_run_hf` exports a finished GLUE run's reduced model. An export is written only into a
new or empty folder, or with ``overwrite`` over an earlier HF export that holds nothing else; it is
built beside the folder and swapped in once complete, and never deletes what it did not create
(:mod:`flaxprune.export`'s rules).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save as save_safetensors

from flaxprune.gates import is_gate_param
from flaxprune.hf_format import (
    CONFIG,
    FILES,
    FORMAT,
    FORMAT_VERSION,
    KINDS,
    NUMPY_FORWARD,
    PROJECTIONS,
    README,
    SAVED_DTYPE,
    TOKENIZER_FILES,
    WEIGHTS,
    hf_tensor_table,
    is_hf_export,
    load_hf,
    projection_in_out,
)
from flaxprune.layers.factorized import DIAGONAL_PARAM, FactorizedSpec
from flaxprune.models.bert import BertClassifier, BertConfig
from flaxprune.output_folder import check_output_folder

# The format's names (flaxprune.hf_format) stay importable from here, where users and the README find them.
__all__ = [
    "FILES", "FORMAT", "FORMAT_VERSION", "KINDS", "NUMPY_FORWARD", "PROJECTIONS",
    "check_hf_output", "export_hf", "export_run_hf", "is_hf_export", "load_hf",
]


# ---------------------------------------------------------------------------------------------------------
# The output folder: new, empty, or an earlier HF export of ours (hf_format.is_hf_export).


def check_hf_output(directory: str | pathlib.Path, overwrite: bool = False) -> None:
    """Refuses a folder an HF export may not be written to (anything but new, empty, or ours with ``overwrite``).

    Raises:
      FileExistsError: naming the folder, what is there, and what is accepted.
    """
    check_output_folder(directory, overwrite, what="an HF export", is_ours=is_hf_export)


def _remove_ours(directory: pathlib.Path) -> None:
    """Deletes a folder of our files, file by file (an unknown file stops ``rmdir``, and is never deleted)."""
    for name in FILES:
        (directory / name).unlink(missing_ok=True)
    directory.rmdir()


def _write(directory: pathlib.Path, files: Mapping[str, bytes]) -> None:
    """Writes ``files`` into a sibling folder (``config.json`` last), then swaps it into place."""
    staging, old = (directory.with_name(f"{directory.name}.hf-export-{s}") for s in ("new", "old"))
    for leftover in (staging, old):  # our own, from an interrupted export
        if leftover.exists():
            if not (leftover.is_dir() and {p.name for p in leftover.iterdir()} <= set(FILES)):
                raise FileExistsError(f"{leftover} is in the way of writing {directory}; move it, then rerun.")
            _remove_ours(leftover)
    staging.mkdir(parents=True)
    for name in sorted(files, key=lambda n: n == CONFIG):
        (staging / name).write_bytes(files[name])
    if directory.exists() and any(directory.iterdir()):  # an earlier export, as check_hf_output allowed
        directory.rename(old)
        staging.rename(directory)
        _remove_ours(old)
    else:
        if directory.exists():
            directory.rmdir()  # empty
        staging.rename(directory)


# ---------------------------------------------------------------------------------------------------------
# Export.


def _bad(parameter: str, value: Any, accepted: str) -> ValueError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return ValueError(f"export_hf: {parameter}={shown} is not accepted; expected {accepted}.")


def _projection_kinds(params: Mapping[str, Any], config: BertConfig) -> list[dict[str, dict[str, Any]]]:
    """Per layer and projection: kind, kept rank, in, out (after the params were checked against the model)."""
    layers = []
    for i in range(config.num_layers):
        layer = {}
        for proj, sub in PROJECTIONS.items():
            path = ("bert", "encoder", f"layer_{i}", *sub)
            node = params
            for key in path:
                node = node[key]
            n_in, n_out = projection_in_out(config, proj)
            spec = config.plan.spec(path)
            if "kernel" in node:
                rank = spec.rank if isinstance(spec, FactorizedSpec) and config.factorized else min(n_in, n_out)
                kind = "dense"
            else:
                kind, rank = ("factored", int(np.shape(node["P"])[1])) if "P" in node else ("bias_only", 0)
            layer[proj] = {"kind": kind, "rank": int(rank), "in": n_in, "out": n_out}
        layers.append(layer)
    return layers


def _check_params(params: Any, config: BertConfig) -> dict[tuple[str, ...], np.ndarray]:
    """The params flattened to numpy, once they are known to be exactly what ``BertClassifier(config)`` takes."""
    if not isinstance(params, Mapping) or set(params) == {"params"}:
        keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise _bad("params", keys, "the BertClassifier's params {'bert': ..., 'classifier': ...} "
                   "(variables['params'], after flaxprune.shrink)")
    flat = flax.traverse_util.flatten_dict(dict(jax.device_get(params)))
    for path in flat:
        if is_gate_param(path[-1]) or path[-1] == DIAGONAL_PARAM:
            raise _bad("params", "/".join(map(str, path)), "reduced params without gates: pass "
                       "flaxprune.shrink(params, config), which cuts the closed components and drops the gates")
    ids = jnp.zeros((1, 1), jnp.int32)
    want = flax.traverse_util.flatten_dict(
        jax.eval_shape(BertClassifier(config).init, jax.random.key(0), ids)["params"])
    for path in sorted(set(want) | set(flat)):
        name = "/".join(map(str, path))
        if path not in flat or path not in want:
            where = "the config builds no such param" if path not in want else "the params lack it"
            raise _bad("params", name, f"params that fit the config ({where}; pass the config shrink returned)")
        if tuple(np.shape(flat[path])) != want[path].shape:
            raise _bad("params", f"{name} of shape {tuple(np.shape(flat[path]))}",
                       f"shape {want[path].shape}, what the config builds there")
    return {path: np.asarray(leaf) for path, leaf in flat.items()}


def _versions() -> dict[str, str]:
    from flaxprune import __version__  # the package is imported by now; at the top it would be circular

    out = {"flaxprune": __version__}
    for name in ("jax", "flax", "safetensors", "numpy"):
        out[name] = importlib.metadata.version(name)
    return out


def _hf_config(config: BertConfig, labels: Sequence[str] | None, block: dict[str, Any]) -> dict[str, Any]:
    labels = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(config.num_labels)]
    return {
        "architectures": ["BertForSequenceClassification"], "model_type": "bert",
        "hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu", "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_position, "type_vocab_size": config.type_vocab_size,
        "vocab_size": config.vocab_size, "layer_norm_eps": config.layer_norm_eps, "initializer_range": 0.02,
        "position_embedding_type": "absolute", "pad_token_id": 0,
        "torch_dtype": SAVED_DTYPE.get(block["param_dtype"], block["param_dtype"]),
        "num_labels": config.num_labels, "id2label": {str(i): n for i, n in enumerate(labels)},
        "label2id": {n: i for i, n in enumerate(labels)},
        "problem_type": "regression" if config.num_labels == 1 else "single_label_classification",
        "flaxprune": block,
    }


def _readme(hf: dict[str, Any], folder_name: str) -> str:
    block = hf["flaxprune"]
    cell = {"dense": "dense (rank {})", "factored": "factored, rank {}", "bias_only": "bias only"}
    rows = [f"| {i} | " + " | ".join(cell[e["kind"]].format(e["rank"]) for e in layer.values()) + " |"
            for i, layer in enumerate(block["layers"])]
    compat = ("Every projection is dense, so this is a plain HF `BertForSequenceClassification` checkpoint: "
              "`transformers.BertForSequenceClassification.from_pretrained(folder)` loads it."
              if block["transformers_compatible"] else
              "Factored projections hold `weight_in` [r, in] and `weight_out` [out, r] (weight = weight_out @ "
              "weight_in) instead of `weight`: in PyTorch, such a projection is `nn.Linear(in, r, bias=False)` "
              "(weight_in) followed by `nn.Linear(r, out)` (weight_out, bias). A `bias_only` projection outputs its "
              "bias.")
    return "\n".join([
        f"# {folder_name}: a pruned BERT classifier", "",
        f"Exported by flaxprune {block['versions']['flaxprune']} from {block['source'] or 'params in memory'}: "
        f"{hf['num_hidden_layers']} layers, hidden {hf['hidden_size']}, {hf['num_attention_heads']} heads, "
        f"{hf['num_labels']} labels, {block['total_params']:,} params. The encoder projections:", "",
        "| layer | " + " | ".join(PROJECTIONS) + " |", "|---" * (len(PROJECTIONS) + 1) + "|", *rows, "", compat, "",
        "## Load with flaxprune", "", "```python", "import flaxprune.hf_export as hf",
        "from flaxprune.models import BertClassifier", f'config, params = hf.load_hf("{folder_name}")',
        "logits = BertClassifier(config).apply({'params': params}, input_ids, token_type_ids, attention_mask)",
        "```", "", "## Load with numpy and safetensors alone", "", "```python", NUMPY_FORWARD.rstrip(), "```", "",
        f'`bert_logits("{folder_name}", input_ids, token_type_ids, attention_mask)` gives `[batch, num_labels]` '
        "logits. config.json's `flaxprune` block says, per layer and projection, the kind and the kept rank.", "",
    ])


def export_hf(
    params: Any,
    config: BertConfig,
    output: str | pathlib.Path,
    *,
    overwrite: bool = False,
    source: str | None = None,
    labels: Sequence[str] | None = None,
    tokenizer: str | pathlib.Path | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes a reduced ``BertClassifier`` as an HF-style folder (the folder :mod:`flaxprune.hf_format` describes).

    Args:
      params: the classifier's reduced params (``flaxprune.shrink``'s), or the params of an ungated model.
      config: the :class:`BertConfig` that builds them (shrink's).
      output: a new or empty folder, or with ``overwrite`` an earlier HF export.
      overwrite: replace an earlier HF export in ``output`` (nothing else is ever replaced).
      source: where the model came from, for ``config.json`` and the README.
      labels: the label names in id order (``id2label``); None: ``LABEL_0``, ...
      tokenizer: a folder whose tokenizer files (:data:`TOKENIZER_FILES`, those present) are copied.
      extra: more JSON-able facts for the ``flaxprune`` block (a run's task and summary).

    Returns:
      The ``config.json`` written.

    Raises:
      FileExistsError: from :func:`check_hf_output`, before anything is computed or written.
      ValueError: naming the parameter, the value and what is accepted: a config that is no BertConfig,
        params that still carry gates or do not fit the config, labels of the wrong count.
    """
    if not isinstance(config, BertConfig):
        raise _bad("config", config, "a flaxprune BertConfig (the BertClassifier's, as shrink returns it)")
    if labels is not None and (isinstance(labels, str) or len(labels) != config.num_labels
                               or len(set(labels)) != len(labels)):
        raise _bad("labels", labels, f"None or {config.num_labels} distinct names (config.num_labels)")
    tok = pathlib.Path(tokenizer) if tokenizer is not None else None
    if np.dtype(config.param_dtype).name not in ("float32", "float16", "bfloat16"):
        raise _bad("config.param_dtype", config.param_dtype, "float32, float16 or bfloat16")
    if tok is not None and not (tok / "vocab.txt").is_file():
        raise _bad("tokenizer", str(tokenizer), "None or a folder holding vocab.txt (an HF tokenizer's files)")
    output = pathlib.Path(output).absolute()
    check_hf_output(output, overwrite)
    flat = _check_params(params, config)
    kinds = _projection_kinds(flax.traverse_util.unflatten_dict(flat), config)
    dtype = np.dtype(flat[("classifier", "bias")].dtype).name
    tensors = {}
    for name, path, _, transpose in hf_tensor_table(config, kinds):
        value = flat[path].T if transpose else flat[path]
        tensors[name] = np.ascontiguousarray(value, SAVED_DTYPE.get(dtype, dtype))
    weights = save_safetensors(tensors, metadata={"format": "pt"})  # "pt": what transformers' loader expects
    block = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "factorized": config.factorized,
        "param_dtype": dtype, "dtype": None if config.dtype is None else np.dtype(config.dtype).name,
        "layers": kinds, "transformers_compatible": all(e["kind"] == "dense" for x in kinds for e in x.values()),
        "total_params": int(sum(v.size for v in flat.values())),
        "weights_sha256": hashlib.sha256(weights).hexdigest(), "source": source, "versions": _versions(),
    }
    clash = sorted(set(extra or {}) & set(block))
    if clash:
        raise _bad("extra", clash, f"keys other than the block's own {sorted(block)}")
    block.update(extra or {})
    hf = _hf_config(config, labels, block)
    files = {WEIGHTS: weights, CONFIG: (json.dumps(hf, indent=2) + "\n").encode("utf-8"),
             README: _readme(hf, output.name).encode("utf-8")}
    for name in TOKENIZER_FILES if tok is not None else ():
        if (tok / name).is_file():
            files[name] = (tok / name).read_bytes()
    _write(output, files)
    return hf


# ---------------------------------------------------------------------------------------------------------
# A finished GLUE run.


def export_run_hf(run_dir: str | pathlib.Path, output: str | pathlib.Path, *,
                  overwrite: bool = False) -> dict[str, Any]:
    """Exports a GLUE run's reduced model (its ``reduced/``, else its ``best/`` checkpoint shrunk now).

    A run writes ``reduced/`` at its end from its best checkpoint: that model, which the run evaluated
    and timed, is exported, with the GLUE task's label names, the tokenizer files of the run's
    pretrained folder, and the run's task and ``summary.json`` in the ``flaxprune`` block (``run``).
    ``run_dir`` may also be a reduced-model folder (``flaxprune shrink``'s), exported as it is.

    Returns:
      The ``config.json`` written.

    Raises:
      FileNotFoundError: no run or reduced model there, or a run with neither ``reduced/`` nor ``best/``.
      ValueError: a run of another task than GLUE (or a reduced model of no BERT classifier).
      FileExistsError: an output that may not be written (:func:`check_hf_output`), checked before loading.
    """
    from flaxprune.data.glue import get_task  # tensorflow_datasets: only for a run's task
    from flaxprune.models.bert_checkpoint import minilm_path
    from flaxprune.surgery import shrink
    from flaxprune.training.checkpoint import is_reduced_model, load_reduced
    from flaxprune.training.run_dir import RunFiles
    from flaxprune.training.runs import load_run

    run = RunFiles(run_dir)
    folder = run.workdir
    if not run.config.is_file():
        if not (folder.is_dir() and is_reduced_model(folder)):
            raise FileNotFoundError(f"{run.config} is missing: {folder} is neither a flaxprune run directory nor a "
                                    "reduced model (what flaxprune shrink writes).")
        check_hf_output(output, overwrite)
        _, params, config = load_reduced(folder)
        return export_hf(params, config, output, overwrite=overwrite, source=str(folder))
    check_hf_output(output, overwrite)
    experiment = json.loads(run.config.read_text(encoding="utf-8"))
    if experiment.get("task") != "glue":
        raise ValueError(f"export_run_hf: run_dir={str(folder)!r} is a task={experiment.get('task')!r} run; "
                         "accepted: a GLUE run (a BertClassifier).")
    if run.reduced.is_dir() and is_reduced_model(run.reduced):
        _, params, config = load_reduced(run.reduced)
        source = str(run.reduced)
    elif run.best.is_dir():
        _, params, config, step = load_run(folder, "best")
        params, config = shrink(params, config)
        source = f"{run.best} (step {step}, shrunk)"
    else:
        raise FileNotFoundError(f"run {folder} has neither a reduced model ({run.reduced}) nor a best "
                                f"checkpoint ({run.best}).")
    task = get_task(experiment["data"]["task"])
    tokenizer = experiment["model"].get("checkpoint") or minilm_path()
    if tokenizer is not None and not (pathlib.Path(tokenizer) / "vocab.txt").is_file():
        tokenizer = None  # the pretrained folder moved: the export is still whole, only without a tokenizer
    summary = json.loads(run.summary.read_text(encoding="utf-8")) if run.summary.is_file() else {}
    scalars = {k: v for k, v in summary.items() if isinstance(v, (bool, int, float, str))}
    return export_hf(params, config, output, overwrite=overwrite, source=source, labels=task.label_names,
                     tokenizer=tokenizer, extra={"run": {"directory": str(folder), "task": task.name,
                                                         "summary": scalars}})
