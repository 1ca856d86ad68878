"""A reduced BERT classifier as an HF-style folder: safetensors and JSON that any framework can read.

:func:`export_hf` writes a (shrunk) :class:`~flaxprune.models.bert.BertClassifier` as the folder that
``transformers``' ``save_pretrained`` writes for ``BertForSequenceClassification``, except where pruning
changed a shape:

* ``model.safetensors``: every tensor under its PyTorch name and in its layout (linear weights
  ``[out, in]``): ``bert.embeddings.{word,position,token_type}_embeddings.weight``,
  ``bert.embeddings.LayerNorm.{weight,bias}``, ``bert.encoder.layer.{i}.{attention.output,output}.LayerNorm``,
  ``bert.pooler.dense.{weight,bias}``, ``classifier.{weight,bias}``, and for each encoder projection
  ``bert.encoder.layer.{i}.<projection>`` (``<projection>`` one of :data:`PROJECTIONS`) by its kind:

  - ``dense``: ``.weight [out, in]`` and ``.bias [out]``, HF's own (a projection surgery merged
    because its kept rank saved nothing, or every projection of an unfactorized model);
  - ``factored``: ``.weight_in [r, in]``, ``.weight_out [out, r]`` and ``.bias``, where
    ``weight = weight_out @ weight_in`` (flaxprune's ``P = weight_in.T``, ``Q = weight_out.T``);
  - ``bias_only``: ``.bias`` alone: every component was cut, the projection outputs its bias.

* ``config.json``: HF's ``BertConfig`` fields (``hidden_size``, ``num_attention_heads``, ...,
  ``id2label``) and a ``flaxprune`` block::

      "flaxprune": {"format": "flaxprune hf bert", "format_version": 1,
                    "factorized": true, "param_dtype": "float32", "dtype": null,
                    "layers": [{"attention.self.query": {"kind": "factored", "rank": 3, "in": 8, "out": 8},
                                "attention.self.key": {"kind": "dense", "rank": 5, "in": 8, "out": 8}, ...}, ...],
                    "transformers_compatible": false, "total_params": 1234, "weights_sha256": "...",
                    "source": "...", "versions": {"flaxprune": ..., "jax": ..., "flax": ..., ...}}

  ``rank`` is the kept rank (of a ``dense`` projection in a factorized model: the components merged
  into it; in an unfactorized one ``min(in, out)``). With every projection ``dense``
  (``transformers_compatible``) the folder is a plain HF checkpoint.
* ``README.md``: what the model is and how to load it; and the tokenizer's files when given.

:func:`load_hf` reads a folder back (safetensors and JSON only, never code; every name and shape
checked) into ``(config, params)`` so that ``BertClassifier(config).apply`` reproduces the exported
model. With numpy and ``safetensors`` alone (no jax, flax or flaxprune), this computes the logits
(:data:`NUMPY_FORWARD`; ``ids``, ``types``, ``mask`` are ``[batch, time]`` int arrays)::

    import json, math
    import numpy as np
    from safetensors.numpy import load_file

    def bert_logits(folder, ids, types, mask):  # mask: 1 for real tokens, 0 for padding
        cfg, w = json.load(open(f"{folder}/config.json")), load_file(f"{folder}/model.safetensors")
        def linear(name, x):  # a dense weight [out, in], a factored pair (weight_out @ weight_in), or a bias alone
            if f"{name}.weight" in w:
                return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]
            if f"{name}.weight_in" in w:
                return x @ w[f"{name}.weight_in"].T @ w[f"{name}.weight_out"].T + w[f"{name}.bias"]
            return np.zeros(x.shape[:-1] + w[f"{name}.bias"].shape, x.dtype) + w[f"{name}.bias"]
        def norm(name, x):
            x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + cfg["layer_norm_eps"])
            return x * w[f"{name}.weight"] + w[f"{name}.bias"]
        gelu = np.vectorize(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))  # BERT's exact GELU
        e = {k: w[f"bert.embeddings.{k}_embeddings.weight"] for k in ("word", "position", "token_type")}
        x = norm("bert.embeddings.LayerNorm", e["word"][ids] + e["position"][: ids.shape[1]] + e["token_type"][types])
        (b, t, h), n = x.shape, cfg["num_attention_heads"]
        mask_bias = (1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min  # [b, 1, 1, t]
        for i in range(cfg["num_hidden_layers"]):
            p = f"bert.encoder.layer.{i}."
            q, k, v = (linear(f"{p}attention.self.{m}", x).reshape(b, t, n, h // n).transpose(0, 2, 1, 3)
                       for m in ("query", "key", "value"))
            s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(h // n) + mask_bias  # [b, heads, t, t]
            a = np.exp(s - s.max(-1, keepdims=True))
            a = ((a / a.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(b, t, h)
            x = norm(f"{p}attention.output.LayerNorm", x + linear(f"{p}attention.output.dense", a))
            x = norm(f"{p}output.LayerNorm", x + linear(f"{p}output.dense", gelu(linear(f"{p}intermediate.dense", x))))
        return linear("classifier", np.tanh(linear("bert.pooler.dense", x[:, 0])))  # [b, num_labels]

:func:`export_run_hf` exports a finished GLUE run's reduced model. An export is written only into a
new or empty folder, or with ``overwrite`` over an earlier HF export that holds nothing else; it is
built beside the folder and swapped in once complete, and never deletes what it did not create
(:mod:`flaxprune.export`'s rules).
"""

from __future__ import annotations

import dataclasses
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
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from flaxprune.gates import is_gate_param
from flaxprune.layers.factorized import DIAGONAL_PARAM, FactorizedSpec
from flaxprune.models.bert import BertClassifier, BertConfig
from flaxprune.plan import Plan

__all__ = [
    "FILES", "FORMAT", "FORMAT_VERSION", "KINDS", "NUMPY_FORWARD", "PROJECTIONS",
    "check_hf_output", "export_hf", "export_run_hf", "is_hf_export", "load_hf",
]

FORMAT, FORMAT_VERSION = "flaxprune hf bert", 1  # config.json["flaxprune"]["format"], ["format_version"]
WEIGHTS, CONFIG, README = "model.safetensors", "config.json", "README.md"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
FILES = (WEIGHTS, CONFIG, README, *TOKENIZER_FILES)  # everything an HF export may hold
KINDS = ("dense", "factored", "bias_only")
# Torch name of each encoder projection inside a layer -> its flax path inside bert/encoder/layer_{i}.
PROJECTIONS = {
    "attention.self.query": ("attention", "query"),
    "attention.self.key": ("attention", "key"),
    "attention.self.value": ("attention", "value"),
    "attention.output.dense": ("attention", "output"),
    "intermediate.dense": ("intermediate",),
    "output.dense": ("output",),
}
# safetensors' numpy reader has no bfloat16: such params are saved as float32 (exactly) and cast back on loading.
_SAVED_DTYPE = {"bfloat16": "float32"}
_SUFFIXES = {"dense": ("weight",), "factored": ("weight_in", "weight_out"), "bias_only": ()}
# The module docstring's numpy-only forward, verbatim (a test holds the two equal and runs it without jax).
NUMPY_FORWARD = '''\
import json, math
import numpy as np
from safetensors.numpy import load_file

def bert_logits(folder, ids, types, mask):  # mask: 1 for real tokens, 0 for padding
    cfg, w = json.load(open(f"{folder}/config.json")), load_file(f"{folder}/model.safetensors")
    def linear(name, x):  # a dense weight [out, in], a factored pair (weight_out @ weight_in), or a bias alone
        if f"{name}.weight" in w:
            return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]
        if f"{name}.weight_in" in w:
            return x @ w[f"{name}.weight_in"].T @ w[f"{name}.weight_out"].T + w[f"{name}.bias"]
        return np.zeros(x.shape[:-1] + w[f"{name}.bias"].shape, x.dtype) + w[f"{name}.bias"]
    def norm(name, x):
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + cfg["layer_norm_eps"])
        return x * w[f"{name}.weight"] + w[f"{name}.bias"]
    gelu = np.vectorize(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))  # BERT's exact GELU
    e = {k: w[f"bert.embeddings.{k}_embeddings.weight"] for k in ("word", "position", "token_type")}
    x = norm("bert.embeddings.LayerNorm", e["word"][ids] + e["position"][: ids.shape[1]] + e["token_type"][types])
    (b, t, h), n = x.shape, cfg["num_attention_heads"]
    mask_bias = (1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min  # [b, 1, 1, t]
    for i in range(cfg["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        q, k, v = (linear(f"{p}attention.self.{m}", x).reshape(b, t, n, h // n).transpose(0, 2, 1, 3)
                   for m in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(h // n) + mask_bias  # [b, heads, t, t]
        a = np.exp(s - s.max(-1, keepdims=True))
        a = ((a / a.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(b, t, h)
        x = norm(f"{p}attention.output.LayerNorm", x + linear(f"{p}attention.output.dense", a))
        x = norm(f"{p}output.LayerNorm", x + linear(f"{p}output.dense", gelu(linear(f"{p}intermediate.dense", x))))
    return linear("classifier", np.tanh(linear("bert.pooler.dense", x[:, 0])))  # [b, num_labels]
'''


def _in_out(config: BertConfig, projection: str) -> tuple[int, int]:
    h, f = config.hidden_size, config.intermediate_size
    return {"intermediate.dense": (h, f), "output.dense": (f, h)}.get(projection, (h, h))


def _table(config: BertConfig, kinds: Sequence[Mapping[str, Mapping[str, Any]]]) -> list[tuple]:
    """``(torch name, flax path, torch shape, transpose)`` of every tensor of the folder, in file order."""
    h = config.hidden_size
    rows = [(f"bert.embeddings.{k}_embeddings.weight", ("bert", "embeddings", f"{k}_embeddings", "embedding"),
             (n, h), False)
            for k, n in (("word", config.vocab_size), ("position", config.max_position),
                         ("token_type", config.type_vocab_size))]

    def norm(name, path):
        rows.extend([(f"{name}.LayerNorm.weight", (*path, "scale"), (h,), False),
                     (f"{name}.LayerNorm.bias", (*path, "bias"), (h,), False)])

    def linear(name, path, n_in, n_out, kind="dense", rank=0):
        shapes = {"weight": ((n_out, n_in), "kernel"), "weight_in": ((rank, n_in), "P"),
                  "weight_out": ((n_out, rank), "Q")}
        rows.extend((f"{name}.{s}", (*path, shapes[s][1]), shapes[s][0], True) for s in _SUFFIXES[kind])
        rows.append((f"{name}.bias", (*path, "bias"), (n_out,), False))

    norm("bert.embeddings", ("bert", "embeddings", "norm"))
    for i, layer in enumerate(kinds):
        t, p = f"bert.encoder.layer.{i}", ("bert", "encoder", f"layer_{i}")
        for proj, sub in PROJECTIONS.items():
            linear(f"{t}.{proj}", (*p, *sub), *_in_out(config, proj), layer[proj]["kind"], layer[proj]["rank"])
            if proj in ("attention.output.dense", "output.dense"):
                norm(f"{t}.{proj.rsplit('.', 1)[0]}", (*p, *sub[:-1], f"{sub[-1]}_norm"))
    linear("bert.pooler.dense", ("bert", "pooler"), h, h)
    linear("classifier", ("classifier",), h, config.num_labels)
    return rows


# ---------------------------------------------------------------------------------------------------------
# The output folder: new, empty, or an earlier HF export of ours.


def is_hf_export(directory: str | pathlib.Path) -> bool:
    """Whether ``directory`` holds an HF export written by :func:`export_hf`, and nothing else."""
    directory = pathlib.Path(directory)
    try:
        names = {p.name for p in directory.iterdir()}
        block = json.loads((directory / CONFIG).read_text(encoding="utf-8")).get("flaxprune")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(block, dict) and block.get("format") == FORMAT and names <= set(FILES)


def check_hf_output(directory: str | pathlib.Path, overwrite: bool = False) -> None:
    """Refuses a folder an HF export may not be written to (anything but new, empty, or ours with ``overwrite``).

    Raises:
      FileExistsError: naming the folder, what is there, and what is accepted.
    """
    directory = pathlib.Path(directory).absolute()
    if not directory.exists():
        return
    if not directory.is_dir():
        raise FileExistsError(f"output {directory} is a file; an HF export is written to a new or empty folder.")
    entries = sorted(p.name for p in directory.iterdir())
    if not entries:
        return
    if not is_hf_export(directory):
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise FileExistsError(f"output {directory} is not empty ({shown}) and is not a flaxprune HF export: "
                              "nothing was written. Choose a new or empty folder.")
    if not overwrite:
        raise FileExistsError(f"output {directory} already holds an HF export: nothing was written. Pass "
                              "--overwrite (overwrite=True) to replace it, or choose a new folder.")


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
            n_in, n_out = _in_out(config, proj)
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
        "torch_dtype": _SAVED_DTYPE.get(block["param_dtype"], block["param_dtype"]),
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
    """Writes a reduced ``BertClassifier`` as an HF-style folder (see the module docstring).

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
    for name, path, _, transpose in _table(config, kinds):
        value = flat[path].T if transpose else flat[path]
        tensors[name] = np.ascontiguousarray(value, _SAVED_DTYPE.get(dtype, dtype))
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
# Loading: safetensors and JSON only.


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"load_hf: no {path.name} at {path}: not an HF model folder.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"load_hf: {path} is not valid JSON ({e}); it looks truncated or corrupt.") from e
    if not isinstance(raw, dict):
        raise ValueError(f"load_hf: {path} holds a {type(raw).__name__}; expected a JSON object (HF BertConfig).")
    return raw


def _config_from(raw: dict[str, Any], path: pathlib.Path) -> tuple[BertConfig, list[dict[str, Any]]]:
    """The model config and the per-layer kinds a ``config.json`` describes (a plain HF one: all dense)."""
    block = raw.get("flaxprune")
    if block is not None and (not isinstance(block, dict) or block.get("format") != FORMAT
                              or block.get("format_version") != FORMAT_VERSION):
        found = (block.get("format"), block.get("format_version")) if isinstance(block, dict) else block
        raise ValueError(f"load_hf: {path}'s flaxprune block is {found!r}; this flaxprune reads "
                         f"({FORMAT!r}, {FORMAT_VERSION}).")
    for key, want in (("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
        if raw.get(key, want) != want:
            raise ValueError(f"load_hf: {path} has {key}={raw[key]!r}; only {want!r} is supported.")
    fields = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_hidden_layers": "num_layers",
              "num_attention_heads": "num_heads", "intermediate_size": "intermediate_size",
              "max_position_embeddings": "max_position", "type_vocab_size": "type_vocab_size",
              "layer_norm_eps": "layer_norm_eps", "hidden_dropout_prob": "dropout",
              "attention_probs_dropout_prob": "attention_dropout", "num_labels": "num_labels"}
    kwargs = {field: raw[key] for key, field in fields.items() if key in raw}
    if "num_labels" not in kwargs and isinstance(raw.get("id2label"), dict):
        kwargs["num_labels"] = len(raw["id2label"])
    block = block or {"factorized": False, "param_dtype": "float32", "dtype": None}
    try:
        kwargs["param_dtype"] = jnp.dtype(block.get("param_dtype", "float32"))
        kwargs["dtype"] = None if block.get("dtype") is None else jnp.dtype(block["dtype"])
        config = BertConfig(**kwargs, factorized=bool(block.get("factorized")))
    except (TypeError, ValueError) as e:
        raise ValueError(f"load_hf: {path} does not describe a BERT this flaxprune builds: {e}") from None
    layers = block.get("layers")
    if layers is None:
        layers = [{p: {"kind": "dense", "rank": min(_in_out(config, p))} for p in PROJECTIONS}] * config.num_layers
    if not (isinstance(layers, list) and len(layers) == config.num_layers
            and all(isinstance(x, dict) and set(x) == set(PROJECTIONS) for x in layers)):
        raise ValueError(f"load_hf: {path}'s flaxprune.layers must list {config.num_layers} layers, each "
                         f"with the projections {list(PROJECTIONS)}.")
    specs = {}
    for i, layer in enumerate(layers):
        for proj, e in layer.items():
            full = min(_in_out(config, proj))
            kind, rank = (e.get("kind"), e.get("rank")) if isinstance(e, dict) else (None, None)
            ok = kind in KINDS and isinstance(rank, int) and not isinstance(rank, bool) and 0 <= rank <= full
            if not ok or (kind == "bias_only") != (rank == 0) or (kind != "dense" and not config.factorized):
                raise ValueError(f"load_hf: {path} has layers[{i}][{proj!r}]={e!r}; expected kind in {list(KINDS)} "
                                 f"and rank in [1, {full}] (0 for bias_only; non-dense needs factorized=true).")
            if config.factorized:
                where = "/".join(("bert", "encoder", f"layer_{i}", *PROJECTIONS[proj]))
                specs[where] = FactorizedSpec(rank=rank, merged=kind == "dense")
    if config.factorized:
        config = dataclasses.replace(config, plan=Plan(layers=tuple(specs.items())))
    return config, layers


def load_hf(folder: str | pathlib.Path) -> tuple[BertConfig, dict[str, Any]]:
    """Reads an HF export (or a plain HF ``BertForSequenceClassification`` folder) back for flaxprune.

    Returns:
      ``(config, params)``: ``BertClassifier(config).apply({'params': params}, ...)`` is the exported
      model (its reduced shapes in ``config.plan``, ungated).

    Raises:
      FileNotFoundError: naming a missing ``config.json`` or ``model.safetensors``.
      ValueError: naming the file: a ``config.json`` that is not JSON or describes no supported BERT, a
        ``model.safetensors`` that does not parse or whose SHA-256 differs from the one recorded, a missing,
        unexpected or misshapen tensor, or one holding NaN or inf.
    """
    folder = pathlib.Path(folder).absolute()
    config_path, path = folder / CONFIG, folder / WEIGHTS
    raw = _read_json(config_path)
    config, layers = _config_from(raw, config_path)
    if not path.is_file():
        raise FileNotFoundError(f"load_hf: no {WEIGHTS} at {path}.")
    data = path.read_bytes()
    try:
        tensors = load_safetensors(data)
    except SafetensorError as e:
        raise ValueError(f"load_hf: cannot read {path} ({len(data):,} bytes): {e}; the file looks truncated or "
                         "corrupt (an interrupted copy?).") from e
    recorded = (raw.get("flaxprune") or {}).get("weights_sha256")
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
        raise ValueError(f"load_hf: {path} ({len(data):,} bytes) does not match the SHA-256 that {config_path} "
                         "records: the file is damaged or was replaced; export the model again.")
    flat, table = {}, _table(config, layers)
    for name, flax_path, shape, transpose in table:
        if name not in tensors:
            raise ValueError(f"load_hf: {path} has no tensor '{name}' (expected shape {shape} from {config_path}).")
        value = tensors[name]
        if value.shape != shape:
            raise ValueError(f"load_hf: tensor '{name}' in {path} has shape {value.shape}, expected {shape} from "
                             f"{config_path}.")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise ValueError(f"load_hf: tensor '{name}' in {path} holds NaN or inf; the file is corrupt.")
        flat[flax_path] = jnp.asarray(np.ascontiguousarray(value.T if transpose else value), config.param_dtype)
    unknown = sorted(set(tensors) - {row[0] for row in table} - {k for k in tensors if k.endswith("position_ids")})
    if unknown:
        raise ValueError(f"load_hf: {path} holds tensors {config_path} does not describe: {unknown[:5]}"
                         f"{' ...' if len(unknown) > 5 else ''}.")
    return config, flax.traverse_util.unflatten_dict(flat)


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
