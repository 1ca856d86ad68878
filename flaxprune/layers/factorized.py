"""``FactorizedDense``: ``y = ((x @ P) * z) @ Q + b`` with one gate per rank-1 component.

FLOP (Wang et al., 2020, Sec. 3.2) writes a weight matrix as
``W = P diag(z) Q = sum_k z_k p_k q_k^T`` and puts a hard-concrete gate on
each component; a zero gate removes column ``k`` of ``P`` and row ``k`` of
``Q``, so each gate costs ``in + out`` weights. Surgery keeps the components
whose evaluation mask is non-zero, folds the mask into ``Q`` and, when the
factors would be no smaller than the dense matrix, multiplies them out.

With ``diagonal=True`` the layer also learns a real diagonal ``d`` between
the factors, ``y = ((x @ P) * d * z) @ Q + b``: the structured baseline of
the FLOP paper (AGP on the magnitudes of ``d``, :mod:`flaxprune.agp`), which
prunes a component by setting ``d_k`` to zero. Surgery folds ``d`` into
``Q`` like the mask and cuts the components whose ``d_k * z_k`` is zero.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxprune.gates import GATE_PARAM, GateConfig, deterministic_mask, gate_values, log_alpha_init
from flaxprune.layers.layout import (
    GateGroup,
    Layout,
    LayerRow,
    Node,
    holds,
    mismatch,
    not_2d,
    shape_of,
    size,
    to_numpy,
    unknown_keys,
    wrong_shape,
)
from flaxprune.plan import Plan

__all__ = [
    "DIAGONAL_PARAM",
    "FACTORIZED_LAYOUT",
    "FactorizedDense",
    "FactorizedSpec",
    "check_factorized_rank",
    "check_factorized_spec",
    "check_features",
    "default_rank",
    "factorized_apply",
    "is_size",
]

DIAGONAL_PARAM = "diag"  # the learned diagonal between P and Q (AGP's structured baseline)

default_kernel_init = nn.initializers.lecun_normal()


def is_size(x: Any) -> bool:
    """Whether ``x`` is an int >= 1 (a feature count or a rank; bools are not sizes)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 1


def default_rank(in_features: int, out_features: int) -> int:
    """Rank with the same parameter count as the dense matrix: ``in*out // (in+out)``, at least 1.

    Always within ``[1, min(in, out)]``.

    Raises:
      ValueError: if a size is not an int >= 1.
    """
    if not (is_size(in_features) and is_size(out_features)):
        raise ValueError(
            f"default_rank: (in_features, out_features)=({in_features!r}, {out_features!r}) must be ints >= 1."
        )
    return max(1, in_features * out_features // (in_features + out_features))


def check_features(where: str, features: Any) -> None:
    """Raises unless a layer's ``features`` (its output size) is an int >= 1."""
    if not is_size(features):
        raise ValueError(f"{where}: features={features!r} must be an int >= 1 (the layer's output size).")


@dataclasses.dataclass(frozen=True)
class FactorizedSpec:
    """Structure of one ``FactorizedDense`` after surgery (or set by hand).

    Attributes:
      rank: number of components; 0 means the layer is bias-only.
      gated: whether the components carry gates.
      merged: the factors were multiplied into one ``kernel: [in, out]``.
      diagonal: the layer holds a learned diagonal ``diag: [rank]`` between the factors.
    """

    rank: int
    gated: bool = False
    merged: bool = False
    diagonal: bool = False

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"FactorizedSpec: rank={self.rank} must be >= 0.")
        if self.merged and self.gated:
            raise ValueError("FactorizedSpec: a merged (dense) layer cannot be gated.")
        if self.merged and self.diagonal:
            raise ValueError("FactorizedSpec: a merged (dense) layer has no diagonal.")


def factorized_apply(
    x: jax.Array,
    p: jax.Array,
    q: jax.Array,
    bias: jax.Array | None = None,
    *,
    diag: jax.Array | None = None,
    z: jax.Array | None = None,
    dtype: Any = None,
    precision: Any = None,
) -> jax.Array:
    """``((x @ P) * diag * z) @ Q + bias``: the forward pass of every factorized layer (Linen and NNX).

    Args:
      x: ``[..., in]`` inputs.
      p, q: ``[in, rank]`` and ``[rank, out]`` factors.
      bias: ``[out]`` or None.
      diag: ``[rank]`` learned diagonal or None.
      z: gate values broadcastable against ``[..., rank]`` or None.
      dtype: computation dtype (None: the inputs' promoted dtype, as ``nn.Dense``).
      precision: of the matmuls.

    Returns:
      ``[..., out]``.
    """
    x, p, q, bias = nn.dtypes.promote_dtype(x, p, q, bias, dtype=dtype)
    h = jnp.matmul(x, p, precision=precision)  # [..., rank]
    if diag is not None:
        h = h * diag.astype(h.dtype)
    if z is not None:
        h = h * z.astype(h.dtype)
    y = jnp.matmul(h, q, precision=precision)  # [..., out]
    return y if bias is None else y + bias


_PLAN_FIX = "pass the plan that shrink returned with these params"


def check_factorized_spec(
    where: str, n_in: int, n_out: int, spec: Any, *, plan_wording: bool = True, fix: str | None = None
) -> FactorizedSpec:
    """``spec`` if it can describe a factorized ``n_in -> n_out`` layer.

    Args:
      where: the layer, as the messages name it.
      n_in, n_out: the layer's sizes.
      spec: the structure to check.
      plan_wording: word the errors for a spec that a :class:`~flaxprune.Plan`
        holds for a Linen module named by its path (the messages add the
        sizes); False: for a layer's ``spec=`` argument, ``where`` naming its sizes.
      fix: what the too-many-components message tells to do (None: with
        ``plan_wording``, pass shrink's plan; without, nothing).

    Returns:
      ``spec``.

    Raises:
      ValueError: if ``spec`` is no ``FactorizedSpec`` or has more than ``min(n_in, n_out)`` components.
    """
    full = min(n_in, n_out)  # more components than this only add weights
    if not isinstance(spec, FactorizedSpec):
        if plan_wording:
            raise ValueError(f"{where}: the plan holds {spec!r}, expected a FactorizedSpec.")
        raise ValueError(f"{where}: spec={spec!r} must be a flaxprune.FactorizedSpec or None.")
    if spec.rank > full:
        if plan_wording:
            what, sizes, fix = f"the plan's {spec!r}", f" (in={n_in}, out={n_out})", fix or _PLAN_FIX
        else:
            what, sizes = f"spec={spec!r}", ""
        tail = f"; {fix}." if fix else "."
        raise ValueError(f"{where}: {what} has more components than min(in, out) = {full}{sizes}{tail}")
    return spec


def check_factorized_rank(where: str, n_in: int, n_out: int, rank: Any, *, plan_wording: bool = True) -> int:
    """``rank`` as an int if it is in ``[1, min(n_in, n_out)]``.

    Args:
      where, n_in, n_out, plan_wording: as in :func:`check_factorized_spec`
        (``plan_wording`` adds the sizes to the message).
      rank: the number of components asked for.

    Raises:
      ValueError: naming the range and the default rank.
    """
    full = min(n_in, n_out)
    if not (is_size(rank) and rank <= full):
        sizes = f" (in={n_in}, out={n_out})" if plan_wording else ""
        raise ValueError(
            f"{where}: rank={rank!r} must be an int in [1, min(in, out)] = [1, {full}]{sizes}; rank=None gives "
            f"in*out // (in+out) = {default_rank(n_in, n_out)}, as many weights as the dense matrix."
        )
    return int(rank)


class FactorizedDense(nn.Module):
    """A dense layer factorized as ``P diag(z) Q`` with hard-concrete gates ``z``.

    Drop-in for ``nn.Dense``. Params: ``P: [in, rank]``, ``Q: [rank, out]``,
    ``bias: [out]`` and, when gated, ``log_alpha: [rank]``. After surgery the
    plan may turn it into a plain ``kernel: [in, out]`` (``merged``) or a
    bias-only layer (rank 0).

    Attributes:
      features: output size.
      rank: number of components; default ``in*out // (in+out)`` (as many
        parameters as the dense matrix).
      use_bias: add a bias.
      gated: gate the components (False: a plain low-rank layer, for a dense
        baseline or a warm start).
      per_example_gates: draw a gate sample per example (leading axis of the
        input) instead of one per call shared by the batch.
      plan: pruning plan; a spec stored under this module's path overrides
        ``rank`` and ``gated``.
      deterministic: default gate mode (eval mask) when not given per call.
      diagonal: learn a real diagonal ``diag: [rank]`` (initialised to ones)
        between ``P`` and ``Q``: AGP's structured baseline prunes its entries
        by magnitude.
    """

    features: int
    rank: int | None = None
    use_bias: bool = True
    gated: bool = True
    diagonal: bool = False
    per_example_gates: bool = False
    plan: Plan = Plan()
    deterministic: bool | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = default_kernel_init
    bias_init: Any = nn.initializers.zeros_init()

    def spec(self, in_features: int) -> FactorizedSpec:
        """The structure this module builds: the plan's spec or the defaults.

        Raises:
          ValueError: if ``features`` is not an int >= 1, or the rank (given,
            or the plan's) is not in ``[1, min(in, out)]`` (0 from a plan: bias-only).
        """
        where = f"FactorizedDense at '{'/'.join(self.path)}'"
        check_features(where, self.features)
        found = self.plan.spec(self.path)
        if found is not None:
            return check_factorized_spec(where, in_features, self.features, found)
        if self.rank is None:
            return FactorizedSpec(
                rank=default_rank(in_features, self.features), gated=self.gated, diagonal=self.diagonal
            )
        rank = check_factorized_rank(where, in_features, self.features, self.rank)
        return FactorizedSpec(rank=rank, gated=self.gated, diagonal=self.diagonal)

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        spec = self.spec(x.shape[-1])
        in_features = x.shape[-1]
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        if spec.merged:
            kernel = self.param("kernel", self.kernel_init, (in_features, self.features), self.param_dtype)
            x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
            y = jnp.matmul(x, kernel, precision=self.precision)
            return y if bias is None else y + bias
        if spec.rank == 0:
            dtype = self.dtype or jnp.result_type(x, self.param_dtype)
            y = jnp.zeros(x.shape[:-1] + (self.features,), dtype)
            return y if bias is None else y + bias.astype(dtype)
        # Params in this order: Linen's init keys follow the order of creation.
        p = self.param("P", self.kernel_init, (in_features, spec.rank), self.param_dtype)
        q = self.param("Q", self.kernel_init, (spec.rank, self.features), self.param_dtype)
        diag = z = None
        if spec.diagonal:
            diag = self.param(DIAGONAL_PARAM, nn.initializers.ones_init(), (spec.rank,), self.param_dtype)
        if spec.gated:
            deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
            log_alpha = self.param(
                GATE_PARAM,
                log_alpha_init(self.plan.gate.drop_rate, self.plan.gate.init_std),
                (spec.rank,),
                jnp.float32,
            )
            z = _gates(self, log_alpha, deterministic, x)
        return factorized_apply(x, p, q, bias, diag=diag, z=z, dtype=self.dtype, precision=self.precision)


def _gates(module: nn.Module, log_alpha: jax.Array, deterministic: bool, x: jax.Array) -> jax.Array:
    """Gate values broadcastable against ``[..., n]`` for inputs ``x: [..., in]``."""
    if module.per_example_gates and not deterministic and x.ndim > 1:
        z = gate_values(module, log_alpha, module.plan.gate, deterministic, (x.shape[0],))  # [batch, n]
        return z.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + log_alpha.shape)
    return gate_values(module, log_alpha, module.plan.gate, deterministic)


# --- layout: size accounting and surgery on the params node -----------------


_KEYS = ("P", "Q", "bias", GATE_PARAM, DIAGONAL_PARAM)
RESERVED = (
    "flaxprune reserves 'P' and 'Q' for FactorizedDense, whose node holds exactly P: [in, rank] and "
    "Q: [rank, out], and optionally bias: [out], log_alpha: [rank] and diag: [rank]."
)


def _match(node: Node) -> bool:
    return holds(node, "P") or holds(node, "Q")


def _malformed(node: Node) -> str | None:
    if not (holds(node, "P") and holds(node, "Q")):
        have, lack = ("P", "Q") if holds(node, "P") else ("Q", "P")
        return f"'{have}' without '{lack}'"
    problem = not_2d(node, "P") or not_2d(node, "Q")
    if problem:
        return problem
    p, q = shape_of(node["P"]), shape_of(node["Q"])
    if p[1] != q[0]:
        return f"the ranks of P {p} and Q {q} disagree"
    return (
        unknown_keys(node, _KEYS)
        or wrong_shape(node, GATE_PARAM, (p[1],))
        or wrong_shape(node, DIAGONAL_PARAM, (p[1],))
        or wrong_shape(node, "bias", (q[1],))
    )


def _groups(node: Node) -> list[GateGroup]:
    if GATE_PARAM not in node:
        return []
    p, q = node["P"], node["Q"]
    return [GateGroup(GATE_PARAM, node[GATE_PARAM], int(p.shape[0] + q.shape[1]))]


def _rows(path: str, node: Node, gate: GateConfig) -> list[LayerRow]:
    n_in, rank = node["P"].shape
    n_out = node["Q"].shape[1]
    kept = int(np.count_nonzero(_component_mask(node, gate)))
    bias = size(node.get("bias", ()))
    return [
        LayerRow(
            path=path,
            kind="factorized",
            shape=(int(n_in), int(n_out)),
            rank=kept,
            full_rank=int(rank),
            params=kept * int(n_in + n_out) + bias,
            flops_per_token=2 * kept * int(n_in + n_out),
            gated=GATE_PARAM in node,
        )
    ]


def _component_mask(node: Node, gate: GateConfig):
    """Each component's factor in eval mode: the gates' eval mask times the diagonal (ones without either)."""
    mask = jnp.ones((node["P"].shape[1],), jnp.float32)
    if GATE_PARAM in node:
        mask = deterministic_mask(node[GATE_PARAM], gate)
    if DIAGONAL_PARAM in node:
        mask = mask * jnp.asarray(node[DIAGONAL_PARAM], jnp.float32)
    return mask


def _cuts(node: Node) -> bool:
    return GATE_PARAM in node or DIAGONAL_PARAM in node


def _kept_weights(node: Node, gate: GateConfig) -> jax.Array:
    """The dense ``in x out`` weights the kept components stand for: ``min(k (in + out), in * out)``."""
    n_in, n_out = node["P"].shape[0], node["Q"].shape[1]
    kept = jnp.count_nonzero(_component_mask(node, gate))
    return jnp.minimum(kept * (n_in + n_out), n_in * n_out)


def _shrink(path: str, node: Node, gate: GateConfig) -> tuple[dict | None, FactorizedSpec]:
    p, q = to_numpy(node["P"]), to_numpy(node["Q"])
    dtype = np.asarray(node["Q"]).dtype
    mask = to_numpy(_component_mask(node, gate))  # the gates' eval mask and the diagonal, folded into Q below
    keep = np.flatnonzero(mask)
    n_in, n_out = p.shape[0], q.shape[1]
    out = {} if "bias" not in node else {"bias": node["bias"]}
    if keep.size == 0:
        return (out or None), FactorizedSpec(rank=0)
    p_kept = p[:, keep]
    q_kept = q[keep] * mask[keep][:, None]  # fold the soft mask into Q
    if keep.size * (n_in + n_out) >= n_in * n_out:
        out["kernel"] = jnp.asarray(p_kept @ q_kept, dtype)
        return out, FactorizedSpec(rank=int(keep.size), merged=True)
    out["P"] = jnp.asarray(p_kept, np.asarray(node["P"]).dtype)
    out["Q"] = jnp.asarray(q_kept, dtype)
    return out, FactorizedSpec(rank=int(keep.size))


def _check(path: str, node: Node, spec: Any) -> None:
    if not isinstance(spec, FactorizedSpec):
        raise mismatch(path, "the layer kind", "factorized (P, Q)", type(spec).__name__)
    if spec.merged:
        raise mismatch(path, "the params", "factors P, Q", "a merged kernel")
    if node["P"].shape[1] != spec.rank or node["Q"].shape[0] != spec.rank:
        raise mismatch(path, "the rank of P/Q", (node["P"].shape[1], node["Q"].shape[0]), spec.rank)
    if (GATE_PARAM in node) != spec.gated:
        raise mismatch(path, "gated", GATE_PARAM in node, spec.gated)
    if (DIAGONAL_PARAM in node) != spec.diagonal:
        raise mismatch(path, "diagonal", DIAGONAL_PARAM in node, spec.diagonal)
    if GATE_PARAM in node and node[GATE_PARAM].shape != (spec.rank,):
        raise mismatch(path, "log_alpha's shape", node[GATE_PARAM].shape, (spec.rank,))


def _compact(path: str, node: Node, keep: np.ndarray, spec: Any) -> tuple[dict[str, int], FactorizedSpec]:
    diagonal = DIAGONAL_PARAM in node
    axes = {"P": 1, "Q": 0, GATE_PARAM: 0, **({DIAGONAL_PARAM: 0} if diagonal else {})}
    return axes, FactorizedSpec(rank=int(keep.size), gated=True, diagonal=diagonal)


def _dense_params(node: Node) -> int:
    return int(node["P"].shape[0] * node["Q"].shape[1])


FACTORIZED_LAYOUT = Layout(
    kind="factorized",
    reserved=RESERVED,
    match=_match,
    malformed=_malformed,
    groups=_groups,
    rows=_rows,
    shrink=_shrink,
    check=_check,
    dense_params=_dense_params,
    compact=_compact,
    kept_weights=_kept_weights,
    cuts=_cuts,
)
