"""Reading pytree key paths: the one rule for a leaf's own name.

A leaf's name is the last dict key on its path. Linen params end there
(``('params', 'fc0', 'log_alpha')``); a boxed leaf, such as the
``nnx.Param`` that ``nnx.Optimizer`` hands to an optimizer's ``init``, adds
attribute keys after it (``..., DictKey('log_alpha'), GetAttrKey('value')``),
which must not change what the leaf is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

__all__ = ["dict_keys", "leaf_name"]


def dict_keys(path: Sequence[Any]) -> list[Any]:
    """The dict keys of a key path, in order (attribute and sequence keys left out)."""
    return [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]


def leaf_name(path: Sequence[Any]) -> Any:
    """The leaf's own name: the last dict key of its path, or None on a path with none."""
    keys = dict_keys(path)
    return keys[-1] if keys else None
