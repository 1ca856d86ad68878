"""The HF-style BERT folder: its files, its tensor names, and reading it back (safetensors and JSON only).

A reduced :class:`~flaxprune.models.bert.BertClassifier` is stored (by :func:`flaxprune.hf_export.export_hf`)
as the folder that ``transformers``' ``save_pretrained`` writes for ``BertForSequenceClassification``, except
where pruning changed a shape:

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

:func:`hf_tensor_table` lists every tensor of such a folder: its PyTorch name, its flax path, its shape and
whether it is transposed. :func:`load_hf` reads a folder back (safetensors and JSON only, never code; every
name and shape checked) into ``(config, params)`` so that ``BertClassifier(config).apply`` reproduces the
exported model. With numpy and ``safetensors`` alone (no jax, flax or flaxprune), this computes the logits
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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import flax.traverse_util
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors

from flaxprune.layers.factorized import FactorizedSpec
from flaxprune.models.bert import BertConfig
from flaxprune.plan import Plan

__all__ = [
    "CONFIG", "FILES", "FORMAT", "FORMAT_VERSION", "KINDS", "NUMPY_FORWARD", "PROJECTIONS", "README",
    "SAVED_DTYPE", "TOKENIZER_FILES", "WEIGHTS", "hf_tensor_table", "is_hf_export", "load_hf", "projection_in_out",
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
SAVED_DTYPE = {"bfloat16": "float32"}
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


def projection_in_out(config: BertConfig, projection: str) -> tuple[int, int]:
    """``(in, out)`` features of an encoder projection (a key of :data:`PROJECTIONS`) in the unpruned model."""
    h, f = config.hidden_size, config.intermediate_size
    return {"intermediate.dense": (h, f), "output.dense": (f, h)}.get(projection, (h, h))


def _all_dense(config: BertConfig) -> list[dict[str, dict[str, Any]]]:
    """The per-layer kinds of an unpruned model (a plain HF folder): every projection dense at full rank."""
    return [{p: {"kind": "dense", "rank": min(projection_in_out(config, p))} for p in PROJECTIONS}] * config.num_layers


def hf_tensor_table(
    config: BertConfig, kinds: Sequence[Mapping[str, Mapping[str, Any]]] | None = None,
) -> list[tuple[str, tuple[str, ...], tuple[int, ...], bool]]:
    """Every tensor of the folder of a ``BertClassifier(config)``, in file order.

    Args:
      config: the model's config (its sizes; a factorized model's ranks come from ``kinds``).
      kinds: per layer, per projection (:data:`PROJECTIONS`), a mapping with its ``kind`` (one of
        :data:`KINDS`) and kept ``rank``, as config.json's ``flaxprune.layers``; None: every projection
        ``dense`` (a plain HF ``BertForSequenceClassification``).

    Returns:
      ``(torch name, flax path, torch shape, transpose)`` rows: the tensor's name in ``model.safetensors``,
      its path in the classifier's params, its shape in the file, and whether the file holds the param
      transposed (linear weights: ``[out, in]`` there, ``[in, out]`` in flax).
    """
    kinds = _all_dense(config) if kinds is None else kinds
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
            e = layer[proj]
            linear(f"{t}.{proj}", (*p, *sub), *projection_in_out(config, proj), e["kind"], e["rank"])
            if proj in ("attention.output.dense", "output.dense"):
                norm(f"{t}.{proj.rsplit('.', 1)[0]}", (*p, *sub[:-1], f"{sub[-1]}_norm"))
    linear("bert.pooler.dense", ("bert", "pooler"), h, h)
    linear("classifier", ("classifier",), h, config.num_labels)
    return rows


# ---------------------------------------------------------------------------------------------------------
# Reading: safetensors and JSON only.


def is_hf_export(directory: str | pathlib.Path) -> bool:
    """Whether ``directory`` holds an HF export written by :func:`~flaxprune.hf_export.export_hf`, and nothing else."""
    directory = pathlib.Path(directory)
    try:
        names = {p.name for p in directory.iterdir()}
        block = json.loads((directory / CONFIG).read_text(encoding="utf-8")).get("flaxprune")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(block, dict) and block.get("format") == FORMAT and names <= set(FILES)


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
        layers = _all_dense(config)
    if not (isinstance(layers, list) and len(layers) == config.num_layers
            and all(isinstance(x, dict) and set(x) == set(PROJECTIONS) for x in layers)):
        raise ValueError(f"load_hf: {path}'s flaxprune.layers must list {config.num_layers} layers, each "
                         f"with the projections {list(PROJECTIONS)}.")
    specs = {}
    for i, layer in enumerate(layers):
        for proj, e in layer.items():
            full = min(projection_in_out(config, proj))
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
    flat, table = {}, hf_tensor_table(config, layers)
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
