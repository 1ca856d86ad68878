"""Surgery: SVD factorization of dense weights, and ``shrink`` of gated models.

``factorize`` is FLOP's warm start for pretrained models (Wang et al., 2020,
Sec. 4.3, BERT): ``W = U S V^T`` gives ``P = U sqrt(S)``, ``Q = sqrt(S) V^T``,
exact at full rank. ``shrink`` is the end of FLOP: every component whose
evaluation mask is zero is cut away, the soft mask of the kept ones is folded
into the weights, and the new plan tells the model the smaller static shapes.

Both are pure functions run outside ``jit``: they return new pytrees and never
modify their arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl

from flaxprune.gates import is_gate_param
from flaxprune.layers import AdaptiveSpec, FactorizedSpec, InputGatedSpec, Layout
from flaxprune.layers.input_gated import compose_keep
from flaxprune.layers.layout import check_finite_gates, to_numpy
from flaxprune.param_tree import layout_of, map_layer_nodes, node_at
from flaxprune.plan import Plan, plan_of

__all__ = ["factorize", "factorize_params", "shrink"]

Config = TypeVar("Config")


def factorize(kernel: jax.Array, *, rank: int | None = None, bias: jax.Array | None = None) -> dict[str, jax.Array]:
    """Factorizes a dense kernel ``[in, out]`` into ``P: [in, rank]``, ``Q: [rank, out]`` by SVD.

    ``P = U[:, :rank] sqrt(S[:rank])`` and ``Q = sqrt(S[:rank]) V^T[:rank]``,
    the best rank-``rank`` approximation (Eckart-Young), exact when ``rank =
    min(in, out)``. Splitting ``sqrt(S)`` evenly keeps both factors on the same
    scale, which suits a shared optimizer.

    Args:
      kernel: ``[in, out]`` dense kernel (Flax layout).
      rank: components to keep; default ``min(in, out)``. Keyword-only, like
        ``bias``: ``factorize(kernel, 100)`` would not say which it meant.
      bias: optional ``[out]`` bias, passed through.

    Returns:
      ``{'P', 'Q'}`` (plus ``'bias'``), in the kernel's dtype.

    Raises:
      ValueError: if the kernel is not 2-D or ``rank`` is not in ``[1, min(in, out)]``.
    """
    if np.ndim(kernel) != 2:
        raise ValueError(f"factorize: kernel must be 2-D [in, out], got shape {np.shape(kernel)}.")
    n_in, n_out = np.shape(kernel)
    full = min(n_in, n_out)
    rank = full if rank is None else rank
    if not isinstance(rank, (int, np.integer)) or not 1 <= rank <= full:
        raise ValueError(f"factorize: rank={rank!r} must be an integer in [1, min(in, out)] = [1, {full}].")
    dtype = np.asarray(kernel).dtype
    # One BLAS thread: beside JAX's own threads, a multithreaded LAPACK SVD
    # oversubscribes small machines and runs tens of times slower.
    with threadpoolctl.threadpool_limits(1):
        u, s, vt = np.linalg.svd(to_numpy(kernel), full_matrices=False)
    root = np.sqrt(s[:rank])
    out = {
        "P": jnp.asarray(u[:, :rank] * root, dtype),
        "Q": jnp.asarray(root[:, None] * vt[:rank], dtype),
    }
    if bias is not None:
        if np.shape(bias) != (n_out,):
            raise ValueError(f"factorize: bias has shape {np.shape(bias)}, expected ({n_out},) to match the kernel.")
        out["bias"] = jnp.asarray(bias)
    return out


def factorize_params(dense_params: Mapping[str, Any], twin_params: Mapping[str, Any]) -> dict[str, Any]:
    """Fills the params of a factorized twin from a trained dense (or factorized) model.

    ``twin_params`` are freshly initialised params of the same model built
    with ``FactorizedDense`` (and/or ``InputGatedDense``) in place of
    ``nn.Dense``; they fix the ranks and hold the initial ``log_alpha``. Each
    ``P``/``Q`` pair becomes the SVD factors (at the twin's rank) of the dense
    kernel at the same path; every other leaf is copied from the dense params
    (same path, same shape), except ``log_alpha*`` gates, which keep their
    initial values. Where the source is already factorized (``P`` and ``Q`` of
    the twin's shapes), the factors are copied as they are.

    Raises:
      ValueError: naming the first path where the two trees disagree.
    """
    used: set[str] = set()

    def fill(twin: Mapping[str, Any], dense: Mapping[str, Any] | None, prefix: str) -> dict[str, Any]:
        out = {}
        if "P" in twin and "Q" in twin and dense is not None and "P" in dense and "Q" in dense:
            pass  # already factorized: P and Q are copied below like any other leaf
        elif "P" in twin and "Q" in twin:
            if dense is None or "kernel" not in dense:
                raise ValueError(f"factorize_params: '{prefix}' is factorized in the twin but has no dense kernel.")
            n_in, rank = twin["P"].shape
            n_out = twin["Q"].shape[1]
            if np.shape(dense["kernel"]) != (n_in, n_out):
                raise ValueError(
                    f"factorize_params: '{prefix}/kernel' has shape {np.shape(dense['kernel'])}, "
                    f"the twin's factors need ({n_in}, {n_out})."
                )
            if rank > min(n_in, n_out):
                raise ValueError(
                    f"factorize_params: '{prefix}' has rank {rank} > min(in, out) = {min(n_in, n_out)}; "
                    "SVD gives at most min(in, out) components (build the twin with rank=min(in, out))."
                )
            out.update(factorize(dense["kernel"], rank=rank))
            used.add(f"{prefix}/kernel")
        for key, leaf in twin.items():
            path = f"{prefix}/{key}" if prefix else str(key)
            if key in out:
                continue
            if isinstance(leaf, Mapping):
                child = dense.get(key) if dense is not None else None
                out[key] = fill(leaf, child if isinstance(child, Mapping) else None, path)
            elif is_gate_param(key):
                out[key] = leaf
            else:
                if dense is None or key not in dense:
                    raise ValueError(f"factorize_params: '{path}' is in the twin but not in the dense params.")
                if np.shape(dense[key]) != np.shape(leaf):
                    raise ValueError(
                        f"factorize_params: '{path}' has shape {np.shape(dense[key])} in the dense params, "
                        f"{np.shape(leaf)} in the twin."
                    )
                out[key] = jnp.asarray(dense[key], jnp.asarray(leaf).dtype)
                used.add(path)
        return out

    result = fill(twin_params, dense_params, "")
    unused = sorted(p for p in traverse_util.flatten_dict(dict(dense_params), sep="/") if p not in used)
    if unused:
        raise ValueError(
            f"factorize_params: dense params have no place in the twin: {unused[:5]}"
            f"{' ...' if len(unused) > 5 else ''}; the two models must have the same module paths."
        )
    return result


def _plan_or_raise(config: Any) -> Plan:
    plan = plan_of(config)
    if plan is None:
        raise ValueError(
            f"shrink: config must be a flaxprune.Plan or a frozen dataclass with a 'plan: Plan' field "
            f"(the model's config), got {type(config).__name__}."
        )
    return plan


def _has_no_weights(spec: Any) -> bool:
    return (isinstance(spec, FactorizedSpec) and spec.rank == 0 and not spec.merged) or (
        isinstance(spec, InputGatedSpec) and spec.keep == ()
    ) or (isinstance(spec, AdaptiveSpec) and not any(spec.dims))


def _check_plan(params: Mapping[str, Any], plan: Plan) -> None:
    for path, spec in plan.layers:
        node = node_at(params, path)
        layout = layout_of(node, path)
        if layout is None:
            if _has_no_weights(spec):
                continue
            raise ValueError(
                f"shrink: the plan holds {spec!r} for '{path}', but the params have "
                f"{'no node there' if node is None else 'no layer weights there: ' + str(sorted(node))}. "
                "Pass the params and the config that built them together."
            )
        layout.check(path, node, spec)


def shrink(params: Mapping[str, Any], config: Config) -> tuple[dict[str, Any], Config]:
    """Cuts away every gated component whose evaluation mask is zero.

    For each gated layer: keeps the components (ranks, input features,
    embedding dims) whose deterministic mask is non-zero, folds the soft mask
    values into the weights (``Q``, the kernel rows, or the embedding
    columns), drops the gates, and merges ``P Q`` into a dense kernel when the
    kept rank ``r'`` has ``r' (in + out) >= in * out``. A layer that keeps
    nothing becomes bias-only. Ungated layers are left as they are.

    Args:
      params: the model's params collection (``variables['params']``), whose
        paths are the module paths.
      config: a :class:`Plan`, or the model's frozen dataclass config with a
        ``plan`` field.

    Returns:
      ``(params, config)``: the reduced params and the config (same type)
      whose plan builds the reduced model. In deterministic mode, the reduced
      model gives the gated model's outputs.

    Raises:
      ValueError: if the config carries no plan, the params do not match
        the plan (naming the first layer that disagrees), a node misuses a
        name reserved for a layer, or a gate holds NaN or inf (naming it).
    """
    plan = _plan_or_raise(config)
    if not isinstance(params, Mapping):
        raise ValueError(f"shrink: params must be a Flax params mapping, got {type(params).__name__}.")
    if set(params) == {"params"} and isinstance(params["params"], Mapping):
        raise ValueError(
            "shrink: got the variables dict {'params': ...}; pass variables['params'] so that paths are module paths."
        )
    _check_plan(params, plan)
    specs = {}

    def cut(path: str, node: Mapping[str, Any], layout: Layout) -> Mapping[str, Any] | None:
        groups = layout.groups(node)
        if not groups and not (layout.cuts is not None and layout.cuts(node)):
            return node  # an ungated layer stays as it is
        check_finite_gates("shrink", path, groups)
        node_out, spec = layout.shrink(path, node, plan.gate)
        specs[path] = compose_keep(plan.spec(path), spec)  # inputs a compaction already cut stay cut
        return node_out

    new_params = map_layer_nodes(cut, params)
    new_plan = plan.with_specs(specs)
    if isinstance(config, Plan):
        return new_params, new_plan
    return new_params, dataclasses.replace(config, plan=new_plan)
