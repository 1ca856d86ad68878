"""JSON round trip of the frozen dataclasses that describe a model.

A reduced model must reload without the code that trained it knowing its
shape in advance: its config (with the plan that surgery wrote) is saved as
JSON next to the params. Dataclasses are tagged with their import path.

Loading a file never runs code: :func:`from_tree` rebuilds only the classes
the caller lists (an allow-list, e.g. :data:`flaxprune.models.CONFIG_CLASSES`),
looked up by their tag, never imported by name, and only with the fields those
dataclasses declare, so their own ``__post_init__`` checks every value. A tag
that is not on the list, or an unknown field, is refused. Tuples come back as
tuples (configs must stay hashable) and dtypes as numpy dtypes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["class_tag", "config_from_json", "config_to_json", "from_tree", "to_tree"]

_CLASS = "__class__"
_DTYPE = "__dtype__"


def to_tree(obj: Any) -> Any:
    """Converts a (nested) frozen dataclass into JSON-compatible data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {_CLASS: class_tag(type(obj))}
        for field in dataclasses.fields(obj):
            out[field.name] = to_tree(getattr(obj, field.name))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_tree(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_tree(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    try:
        return {_DTYPE: np.dtype(obj).name}
    except TypeError:
        raise ValueError(f"to_tree: cannot serialize {obj!r} of type {type(obj).__name__}.") from None


def class_tag(cls: type) -> str:
    """The tag :func:`to_tree` writes for a dataclass: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def from_tree(data: Any, classes: Iterable[type]) -> Any:
    """Inverse of :func:`to_tree`, rebuilding only the dataclasses in ``classes``.

    Args:
      data: what :func:`to_tree` wrote (parsed JSON).
      classes: the dataclasses that may be rebuilt; nothing else is ever
        constructed, imported or called.

    Raises:
      ValueError: for a class tag not in ``classes``, a field the class does
        not declare, or a value its own validation refuses.
    """
    allowed = {class_tag(c): c for c in classes}
    for tag, cls in allowed.items():
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ValueError(f"from_tree: classes must be dataclass types, got {cls!r} ({tag}).")
    return _rebuild(data, allowed)


def _rebuild(data: Any, allowed: Mapping[str, type]) -> Any:
    if isinstance(data, list):
        return tuple(_rebuild(x, allowed) for x in data)
    if not isinstance(data, dict):
        return data
    if _DTYPE in data:
        return _dtype(data[_DTYPE])
    if _CLASS not in data:
        return {k: _rebuild(v, allowed) for k, v in data.items()}
    tag = data[_CLASS]
    cls = allowed.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise ValueError(
            f"from_tree: class {tag!r} is not one that may be loaded; accepted: {sorted(allowed)}. A saved config "
            "names only flaxprune's model configs, Plan, GateConfig and the layer specs."
        )
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(k for k in data if k != _CLASS and k not in fields)
    if unknown:
        raise ValueError(f"from_tree: {tag} has no field(s) {unknown}; its fields: {sorted(fields)}.")
    kwargs = {k: _rebuild(v, allowed) for k, v in data.items() if k != _CLASS}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"from_tree: the saved {tag} is not valid: {e}") from None


def _dtype(name: Any) -> np.dtype:
    if not isinstance(name, str):
        raise ValueError(f"from_tree: a dtype must be saved as its name, got {name!r}.")
    try:
        return np.dtype(name)
    except TypeError:
        raise ValueError(f"from_tree: {name!r} is not a numpy dtype name.") from None


def config_to_json(config: Any) -> str:
    return json.dumps(to_tree(config), indent=1, sort_keys=True)


def config_from_json(text: str, classes: Iterable[type]) -> Any:
    """Parses :func:`config_to_json`'s text, rebuilding only ``classes`` (see :func:`from_tree`).

    Raises:
      ValueError: for text that is not JSON, or anything :func:`from_tree` refuses.
    """
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"config_from_json: the saved config is not JSON ({e}).") from None
    return from_tree(data, classes)
