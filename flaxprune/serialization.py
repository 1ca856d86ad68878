"""JSON round trip of the frozen dataclasses that describe a model.

A reduced model must reload without the code that trained it knowing its
shape in advance: its config (with the plan that surgery wrote) is saved as
JSON next to the params. Dataclasses are tagged with their import path, which
must lie inside ``flaxprune`` (or a module the caller allows), so loading
never imports arbitrary code. Tuples come back as tuples (configs must stay
hashable) and dtypes as numpy dtypes.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["config_from_json", "config_to_json", "from_tree", "to_tree"]

_CLASS = "__class__"
_DTYPE = "__dtype__"


def to_tree(obj: Any) -> Any:
    """Converts a (nested) frozen dataclass into JSON-compatible data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {_CLASS: f"{type(obj).__module__}.{type(obj).__qualname__}"}
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


def from_tree(data: Any, allowed_prefixes: Sequence[str] = ("flaxprune.",)) -> Any:
    """Inverse of :func:`to_tree`.

    Raises:
      ValueError: if a class lies outside ``allowed_prefixes`` or no longer exists.
    """
    if isinstance(data, list):
        return tuple(from_tree(x, allowed_prefixes) for x in data)
    if isinstance(data, dict):
        if _DTYPE in data:
            return np.dtype(data[_DTYPE])
        if _CLASS in data:
            path = data[_CLASS]
            if not any(path.startswith(p) for p in allowed_prefixes):
                raise ValueError(f"from_tree: class {path!r} is outside the allowed modules {list(allowed_prefixes)}.")
            module, _, name = path.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as e:
                raise ValueError(f"from_tree: cannot find class {path!r}: {e}") from None
            kwargs = {k: from_tree(v, allowed_prefixes) for k, v in data.items() if k != _CLASS}
            return cls(**kwargs)
        return {k: from_tree(v, allowed_prefixes) for k, v in data.items()}
    return data


def config_to_json(config: Any) -> str:
    return json.dumps(to_tree(config), indent=1, sort_keys=True)


def config_from_json(text: str, allowed_prefixes: Sequence[str] = ("flaxprune.",)) -> Any:
    return from_tree(json.loads(text), allowed_prefixes)
