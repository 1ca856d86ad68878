"""What every flaxprune NNX layer shares: where a gate key comes from, eval mode, and swapping params in place.

A Linen layer draws its gates from the ``gates`` rng stream of ``apply``; an
NNX layer follows ``nnx.Dropout`` instead:

* at construction it keeps a fork of the ``gates`` stream of its ``nnx.Rngs``
  (``nnx.Rngs(params=0, gates=1)``; an ``nnx.Rngs(0)`` serves every stream from
  its default one), so ``model(x)`` samples with no key in sight, and the
  stream's count advances once per draw (under ``nnx.jit`` too), the NNX form
  of ``fold_in(key, step)``;
* a call may pass ``rngs=``: an ``nnx.Rngs`` or ``nnx.RngStream`` (one draw
  per gate vector), or a key, used as it is for a layer with one gate vector
  and folded with the cluster index ``i`` (``fold_in(key, i)``) for cluster
  ``i`` of an adaptive layer;
* ``deterministic`` (constructor, ``model.eval()`` / ``model.train()``,
  ``nnx.view(model, deterministic=True)`` or per call) selects the evaluation
  mask, which needs no key.

The masks themselves are :func:`flaxprune.gates.sample` and
:func:`flaxprune.gates.deterministic_mask`, the functions the Linen layers call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from flaxprune.gates import GateConfig, deterministic_mask, sample
from flaxprune.layers.factorized import is_size

__all__ = ["GATES_RNG", "GatedLayer", "KeySource", "gate_stream"]

GATES_RNG = "gates"  # the rng stream the gates sample from, as in Linen

# What a call may pass as ``rngs``: a stream to draw from, or a key.
KeySource = nnx.Rngs | nnx.RngStream | jax.Array | None


def check_rngs(where: str, rngs: Any) -> nnx.Rngs:
    """``rngs`` if it is an ``nnx.Rngs``, else a ValueError naming the layer."""
    if not isinstance(rngs, nnx.Rngs):
        raise ValueError(
            f"{where}: rngs={rngs!r} must be an nnx.Rngs, e.g. nnx.Rngs(params=0, gates=1): 'params' initialises "
            "the weights, 'gates' seeds the training-mode gate samples."
        )
    return rngs


def gate_stream(rngs: nnx.Rngs) -> nnx.RngStream | None:
    """A fork of the ``gates`` stream of ``rngs`` (its default stream if it has one), or None without either."""
    try:
        return rngs[GATES_RNG].fork()
    except (KeyError, AttributeError):
        return None


def check_gate(where: str, gate: Any) -> GateConfig:
    if not isinstance(gate, GateConfig):
        raise ValueError(f"{where}: gate={gate!r} must be a flaxprune.GateConfig (the hard-concrete settings).")
    return gate


def check_size(where: str, name: str, value: Any, what: str = "") -> int:
    """``value`` as an int if it is one >= 1 (bools are not sizes), else a ValueError naming ``name``."""
    if not is_size(value):
        raise ValueError(f"{where}: {name}={value!r} must be an int >= 1{what}.")
    return int(value)


class GatedLayer(nnx.Module):
    """Base of flaxprune's NNX layers.

    A subclass sets, in ``__init__``: ``spec`` (its structure, a frozen
    dataclass of :mod:`flaxprune.layers`, the value a Linen plan holds for
    it), ``gate`` (a :class:`~flaxprune.GateConfig`), ``deterministic``
    (bool or None) and ``rngs`` (the kept ``gates`` stream or None); it
    implements :meth:`param_names` (the params a spec builds).
    """

    spec: Any
    gate: GateConfig
    deterministic: bool | None
    rngs: nnx.RngStream | None

    def where(self) -> str:
        """The layer as error messages name it."""
        return type(self).__name__

    def set_view(self, deterministic: bool | None = None):
        """Used by ``nnx.view(model, deterministic=...)``.

        Args:
          deterministic: True for the evaluation mask, False to sample gates.
        """
        if deterministic is not None:
            self.deterministic = deterministic

    def plan_spec(self) -> Any | None:
        """The spec a :class:`~flaxprune.Plan` holds for this layer (None: none, as for a tied softmax)."""
        return self.spec

    def param_names(self, spec: Any) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` of the params ``spec`` builds."""
        raise NotImplementedError

    def is_deterministic(self, deterministic: bool | None) -> bool:
        """The call's mode: its ``deterministic``, else the layer's."""
        mode = self.deterministic if deterministic is None else deterministic
        if mode is None:
            raise ValueError(
                f"{self.where()}: deterministic is None both here and in the layer; pass deterministic=True "
                "(evaluation mask) or False (sample the gates), or set it with model.eval() / model.train()."
            )
        return bool(mode)

    def gate_mask(
        self,
        log_alpha: jax.Array,
        deterministic: bool,
        rngs: KeySource,
        batch_shape: tuple[int, ...] = (),
        index: int | None = None,
        gate: GateConfig | None = None,
    ) -> jax.Array:
        """The mask for ``log_alpha: [n]``: the eval mask, or a sample (``batch_shape + [n]``).

        Args:
          log_alpha: ``[n]`` gate parameters.
          deterministic: evaluation mask (True) or a training-mode sample.
          rngs: the call's key source; None: the stream the layer keeps.
          batch_shape: leading shape of independent samples.
          index: the gate vector's index within the layer (an adaptive
            cluster), folded into a key passed as ``rngs``.
          gate: the settings to use (default: the layer's own).
        """
        gate = self.gate if gate is None else gate
        if deterministic:
            return jnp.broadcast_to(deterministic_mask(log_alpha, gate), batch_shape + log_alpha.shape)
        return sample(self.gate_key(rngs, index), log_alpha, gate, batch_shape)

    def gate_key(self, rngs: KeySource, index: int | None = None) -> jax.Array:
        source = self.rngs if rngs is None else rngs
        if isinstance(source, nnx.Rngs):
            return source[GATES_RNG]()
        if isinstance(source, nnx.RngStream):
            return source()
        if isinstance(source, jax.Array):
            return source if index is None else jax.random.fold_in(source, index)
        if source is None:
            raise ValueError(
                f"{self.where()} samples hard-concrete gates in training mode and has no key: build it with "
                f"rngs=nnx.Rngs(params=..., {GATES_RNG}=...), pass rngs= to the call (an nnx.Rngs, an RngStream "
                "or a key), or use the evaluation mask (deterministic=True, model.eval())."
            )
        raise ValueError(
            f"{self.where()}: rngs={source!r} must be an nnx.Rngs, an nnx.RngStream, a jax.random.key or None."
        )

    def restructure(self, spec: Any, params: Mapping[str, Any]) -> None:
        """Gives this layer the structure ``spec`` and the params ``params``, in place.

        :func:`flaxprune.nnx.shrink` calls it on a clone of the model, with
        the spec and the node that :func:`flaxprune.shrink` returned for the
        layer's path; the model it was cloned from is left as it was.

        Raises:
          ValueError: if ``params`` do not hold exactly the params of ``spec``, at their shapes.
        """
        expected = self.param_names(spec)
        found = {str(k): tuple(int(d) for d in jnp.shape(v)) for k, v in params.items()}
        if found != expected:
            raise ValueError(
                f"{self.where()}: restructure got params {found} for {spec!r}, which needs {expected}; "
                "pass the node and the spec that flaxprune.shrink returned for this layer."
            )
        for name in [k for k, v in vars(self).items() if isinstance(v, nnx.Param)]:
            delattr(self, name)
        for name, value in params.items():
            setattr(self, str(name), nnx.Param(jnp.asarray(value)))
        self.spec = spec
        if not getattr(spec, "gated", False) and self.rngs is not None:
            del self.rngs  # an ungated layer draws nothing; its stream would be dead state
            self.rngs = None
