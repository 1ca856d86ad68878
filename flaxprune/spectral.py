"""Gate initialisation from the singular spectrum of SVD-factorized weights.

FLOP starts every ``log_alpha`` at the same value. For a pretrained model
factorized by SVD (Wang et al., 2020, Sec. 4.3) that ignores what the SVD
already knows: component ``k`` of ``W = P diag(z) Q`` carries the singular
value ``sigma_k = |P[:, k]| |Q[k, :]|``, and the leading components carry most
of the function. With one shared start, every component is sampled shut or
scaled down equally often, so the noise lands mostly on the leading ones (on
MiniLM at ``log_alpha = 3.5`` the sampled encoder's hidden states keep a
cosine of 0.74 to the pretrained ones), and the first noisy task gradients
walk important gates closed as easily as unimportant ones.

:func:`spectral_gates` starts each gate in proportion to its singular value
within its matrix:

    log_alpha_k = low + (high - low) * sigma_k / max_j sigma_j

so the leading component sits at ``high`` (nearly never sampled below 1) and
a vanishing one at ``low``. The noise then falls on the tail (cosine 0.86 on
MiniLM with ``low, high = 2.5, 8``), and the task still decides which
components go. With ``low`` above the ``'clip'`` eval mask's open point
(``logit((1 - l) / (r - l))``, 2.40 at FLOP's stretch) the starting model
evaluates exactly as the pretrained one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from flaxprune.gates import GATE_PARAM
from flaxprune.layers import FACTORIZED_LAYOUT, Layout
from flaxprune.param_tree import map_layer_nodes

__all__ = ["component_scales", "spectral_gates", "spectral_log_alpha"]


def component_scales(p: Any, q: Any) -> np.ndarray:
    """``|P[:, k]| * |Q[k, :]|`` for every component: the singular values after :func:`~flaxprune.factorize`.

    Args:
      p: ``[in, rank]`` factor.
      q: ``[rank, out]`` factor.

    Returns:
      ``[rank]`` float64 scales.
    """
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    return np.linalg.norm(p, axis=0) * np.linalg.norm(q, axis=1)


def spectral_log_alpha(scales: Any, low: float, high: float) -> np.ndarray:
    """``low + (high - low) * scales / max(scales)``: one matrix's gates from its spectrum.

    Args:
      scales: ``[rank]`` non-negative component scales (singular values).
      low: ``log_alpha`` of a component with scale 0.
      high: ``log_alpha`` of the largest component (``>= low``).

    Returns:
      ``[rank]`` float32 ``log_alpha``; all ``high`` when every scale is 0.

    Raises:
      ValueError: if ``high < low`` or a scale is negative or not finite.
    """
    _check_range("spectral_log_alpha", low, high)
    s = np.asarray(scales, np.float64)
    if s.ndim != 1 or not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"spectral_log_alpha: scales must be a 1-D array of finite values >= 0, got {s!r}.")
    top = s.max(initial=0.0)
    relative = s / top if top > 0 else np.ones_like(s)
    return (low + (high - low) * relative).astype(np.float32)


def spectral_gates(params: Mapping[str, Any], low: float, high: float) -> dict[str, Any]:
    """Params with every factorized layer's ``log_alpha`` set from its spectrum.

    Every node holding ``P``, ``Q`` and ``log_alpha`` (a gated
    :class:`~flaxprune.FactorizedDense`) gets
    ``spectral_log_alpha(component_scales(P, Q), low, high)``; everything
    else is returned as it is. A pure function: ``params`` is not modified.

    Args:
      params: a Flax params tree, e.g. from :func:`~flaxprune.factorize_params`.
      low, high: the range of ``log_alpha`` (see :func:`spectral_log_alpha`).

    Returns:
      The new params tree.

    Raises:
      ValueError: if ``high < low``, or ``params`` holds no gated factorized layer.
    """
    _check_range("spectral_gates", low, high)
    found = []

    def start(path: str, node: Mapping[str, Any], layout: Layout) -> Mapping[str, Any]:
        if layout is not FACTORIZED_LAYOUT or GATE_PARAM not in node:
            return node
        found.append(path)
        la = spectral_log_alpha(component_scales(node["P"], node["Q"]), low, high)
        return {**node, GATE_PARAM: jnp.asarray(la, jnp.asarray(node[GATE_PARAM]).dtype)}

    if not isinstance(params, Mapping):
        raise ValueError(f"spectral_gates: params must be a nested mapping, got {type(params).__name__}.")
    out = map_layer_nodes(start, params)
    if not found:
        raise ValueError(
            "spectral_gates: params hold no gated factorized layer ('P', 'Q' and 'log_alpha' in one node); "
            "build the model with gated=True and fill it with factorize_params first."
        )
    return out


def _check_range(fn: str, low: Any, high: Any) -> None:
    if not (np.isfinite(low) and np.isfinite(high) and high >= low):
        raise ValueError(f"{fn}: (low, high)=({low!r}, {high!r}) must be finite with high >= low.")
