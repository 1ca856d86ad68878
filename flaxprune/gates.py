"""Hard-concrete (L0) gates, as used by FLOP.

Louizos, Welling & Kingma, "Learning Sparse Neural Networks through L0
Regularization" (ICLR 2018), with the constants and the deterministic mask of
Wang, Wohlwend & Lei, "Structured Pruning of Large Language Models"
(EMNLP 2020, arXiv 1910.04732), Sec. 3.

A gate ``z`` in ``[0, 1]`` is a stretched and clipped binary concrete variable:

    u ~ U(eps, 1 - eps)
    s = sigmoid((logit(u) + log_alpha) / beta)
    z = clip(s * (r - l) + l, 0, 1)

so that ``P(z != 0) = sigmoid(log_alpha - beta * log(-l / r))`` in closed form
(Louizos et al., Eq. 12), which makes the expected number of non-zero gates
(the expected L0 norm) differentiable in ``log_alpha``.

Everything here is a pure function of arrays; :class:`HardConcreteGate` is a
thin Linen shell that owns the ``log_alpha`` parameter and draws from the
``gates`` rng stream.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "GATE_PARAM",
    "GateConfig",
    "HardConcreteGate",
    "deterministic_mask",
    "expected_l0",
    "is_gate_param",
    "log_alpha_init",
    "prob_nonzero",
    "sample",
]

GATES_RNG = "gates"  # name of the rng stream gates sample from
EVAL_MASKS = ("flop", "clip")
GATE_PARAM = "log_alpha"  # a layer's gate vector; an adaptive layer numbers one per cluster: log_alpha_0, ...


def is_gate_param(name: object) -> bool:
    """Whether a params key names a gate vector (``log_alpha``, ``log_alpha_0``, ...).

    The one rule for telling gates from weights: the optimizer gives gates
    their own rate, warm starts keep fresh gates, and surgery drops them.
    """
    return isinstance(name, str) and name.startswith(GATE_PARAM)


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """Hyperparameters of the hard-concrete distribution.

    Attributes:
      beta: temperature. FLOP uses 1.0; Louizos et al. use 2/3.
      limit_l: lower stretch limit ``l`` (< 0).
      limit_r: upper stretch limit ``r`` (> 1).
      eps: uniform noise is drawn from ``[eps, 1 - eps]``.
      drop_rate: initial probability ``d`` used to centre ``log_alpha`` at
        ``log((1 - d) / d)``; 0.5 gives ``log_alpha ~ 0``.
      init_std: standard deviation of the ``log_alpha`` initialisation.
      eval_mask: the deterministic (eval) mask. ``'flop'``: FLOP's
        ``sigmoid(0.8 log_alpha / beta)`` with the ``round(n - E[L0])``
        smallest set to 0; its values are never 1. ``'clip'``: Louizos et
        al.'s test-time gate ``clip(sigmoid(log_alpha) (r - l) + l, 0, 1)``,
        0 for ``log_alpha <= logit(-l / (r - l))`` (-2.40 at FLOP's stretch)
        and 1 above ``logit((1 - l) / (r - l))`` (+2.40), so a warm start
        from pretrained weights with open gates evaluates as (nearly) the
        pretrained model: no component is cut at random at the start.
    """

    beta: float = 1.0
    limit_l: float = -0.1
    limit_r: float = 1.1
    eps: float = 1e-6
    drop_rate: float = 0.5
    init_std: float = 0.01
    eval_mask: str = "flop"

    def __post_init__(self):
        if self.eval_mask not in EVAL_MASKS:
            raise ValueError(
                f"GateConfig: eval_mask={self.eval_mask!r} is not a mask rule; accepted: {list(EVAL_MASKS)}."
            )
        if not self.beta > 0:
            raise ValueError(f"GateConfig: beta={self.beta!r} must be > 0 (FLOP uses 1.0, Louizos et al. 2/3).")
        if not 0 < self.drop_rate < 1:
            raise ValueError(f"GateConfig: drop_rate={self.drop_rate!r} must be in the open interval (0, 1).")
        if not self.limit_l < 0:
            raise ValueError(f"GateConfig: limit_l={self.limit_l!r} must be < 0 (the stretch below zero).")
        if not self.limit_r > 1:
            raise ValueError(f"GateConfig: limit_r={self.limit_r!r} must be > 1 (the stretch above one).")
        if not 0 < self.eps < 0.5:
            raise ValueError(f"GateConfig: eps={self.eps!r} must be in (0, 0.5).")
        if not self.init_std >= 0:
            raise ValueError(f"GateConfig: init_std={self.init_std!r} must be >= 0.")


DEFAULT_GATE = GateConfig()


def log_alpha_init(drop_rate: float = 0.5, std: float = 0.01) -> jax.nn.initializers.Initializer:
    """Initializer for ``log_alpha``: ``Normal(log((1 - d) / d), std)``.

    Raises:
      ValueError: if ``drop_rate`` is not in (0, 1) or ``std`` < 0.
    """
    if not 0 < drop_rate < 1:
        raise ValueError(f"log_alpha_init: drop_rate={drop_rate!r} must be in the open interval (0, 1).")
    if not std >= 0:
        raise ValueError(f"log_alpha_init: std={std!r} must be >= 0.")
    mean = math.log((1.0 - drop_rate) / drop_rate)

    def init(key, shape, dtype=jnp.float32):
        return mean + std * jax.random.normal(key, shape, dtype)

    return init


def _shift(cfg: GateConfig) -> float:
    # beta * log(-l / r): log_alpha minus this is the logit of P(z != 0).
    return cfg.beta * math.log(-cfg.limit_l / cfg.limit_r)


def prob_nonzero(log_alpha: jax.Array, cfg: GateConfig = DEFAULT_GATE) -> jax.Array:
    """``P(z != 0) = sigmoid(log_alpha - beta * log(-l / r))``, elementwise."""
    return jax.nn.sigmoid(log_alpha - _shift(cfg))


def expected_l0(log_alpha: jax.Array, cfg: GateConfig = DEFAULT_GATE) -> jax.Array:
    """Expected number of non-zero gates, summed over the last axis."""
    return jnp.sum(prob_nonzero(log_alpha, cfg), axis=-1)


def sample(
    key: jax.Array,
    log_alpha: jax.Array,
    cfg: GateConfig = DEFAULT_GATE,
    batch_shape: tuple[int, ...] = (),
) -> jax.Array:
    """Draws a training-mode gate sample.

    Args:
      key: PRNG key.
      log_alpha: ``[n]`` gate parameters.
      cfg: distribution hyperparameters.
      batch_shape: leading shape of independent samples; ``()`` draws one
        sample shared by the whole batch (FLOP's default).

    Returns:
      ``batch_shape + [n]`` gates in ``[0, 1]``, differentiable in ``log_alpha``.
    """
    u = jax.random.uniform(
        key, batch_shape + log_alpha.shape, log_alpha.dtype, minval=cfg.eps, maxval=1.0 - cfg.eps
    )
    s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_alpha) / cfg.beta)
    return jnp.clip(s * (cfg.limit_r - cfg.limit_l) + cfg.limit_l, 0.0, 1.0)


def deterministic_mask(log_alpha: jax.Array, cfg: GateConfig = DEFAULT_GATE) -> jax.Array:
    """FLOP's evaluation mask.

    ``soft = sigmoid(0.8 * log_alpha / beta)``; the ``round_half_even(n -
    expected_l0)`` smallest entries of ``soft`` are set to zero (ties broken
    by index, lower first); the others keep their soft values, which surgery
    folds into the weights. With ``cfg.eval_mask='clip'``: Louizos et al.'s
    ``clip(sigmoid(log_alpha) (r - l) + l, 0, 1)`` instead, zeros included.

    Args:
      log_alpha: ``[n]`` gate parameters.
      cfg: distribution hyperparameters.

    Returns:
      ``[n]`` mask; jit-compatible (the number of zeros may be traced).
    """
    n = log_alpha.shape[-1]
    if cfg.eval_mask == "clip":
        return jnp.clip(jax.nn.sigmoid(log_alpha) * (cfg.limit_r - cfg.limit_l) + cfg.limit_l, 0.0, 1.0)
    soft = jax.nn.sigmoid(0.8 * log_alpha / cfg.beta)
    num_zeros = jnp.round(n - expected_l0(jax.lax.stop_gradient(log_alpha), cfg)).astype(jnp.int32)
    rank = jnp.argsort(jnp.argsort(soft, axis=-1, stable=True), axis=-1, stable=True)
    return jnp.where(rank < num_zeros[..., None], jnp.zeros_like(soft), soft)


class HardConcreteGate(nn.Module):
    """A vector of ``n`` hard-concrete gates.

    Owns the parameter ``log_alpha: [n]``. In training mode it draws a sample
    from the ``gates`` rng stream (pass ``rngs={'gates': key}`` to ``apply``);
    in deterministic mode it returns FLOP's evaluation mask and needs no key.

    Attributes:
      n: number of gates.
      config: distribution hyperparameters.
      deterministic: default mode; may be overridden per call.
    """

    n: int
    config: GateConfig = DEFAULT_GATE
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, batch_shape: tuple[int, ...] = (), deterministic: bool | None = None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        log_alpha = self.param(
            "log_alpha", log_alpha_init(self.config.drop_rate, self.config.init_std), (self.n,), jnp.float32
        )
        return gate_values(self, log_alpha, self.config, deterministic, batch_shape)


def gate_values(
    module: nn.Module,
    log_alpha: jax.Array,
    cfg: GateConfig,
    deterministic: bool,
    batch_shape: tuple[int, ...] = (),
) -> jax.Array:
    """Mask for ``log_alpha`` inside ``module``: a sample or the eval mask.

    Shared by every gated layer so that the missing-rng error reads the same.
    """
    if deterministic:
        return jnp.broadcast_to(deterministic_mask(log_alpha, cfg), batch_shape + log_alpha.shape)
    if not module.has_rng(GATES_RNG):
        raise ValueError(
            f"{type(module).__name__} at '{'/'.join(module.path) or '<root>'}' samples hard-concrete gates in "
            f"training mode and needs an rng stream named '{GATES_RNG}': call "
            f"model.apply(variables, ..., rngs={{'{GATES_RNG}': key}}), or pass deterministic=True "
            "to use the evaluation mask."
        )
    return sample(module.make_rng(GATES_RNG), log_alpha, cfg, batch_shape)
