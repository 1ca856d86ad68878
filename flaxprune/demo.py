"""The README demo: FLOP end to end on a character-level MLP language model.

A small next-byte model (embedding of the previous ``context`` bytes, then
``FactorizedDense`` layers) learns Python's own standard-library source (the
embedded corpus, :mod:`flaxprune.data.stdlib_corpus`) while FLOP prunes it
toward a target sparsity with the combined optimizer; then ``shrink`` cuts the
zero components, and the reduced model is checked against the gated one and
timed. Everything a user of the library would write for their own model is
here, in about a page.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import flaxprune as fp
from flaxprune.data import split_bytes, stdlib_text

LOG2E = 1.4426950408889634  # bits per nat


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Hyperparameters of the demo (model, optimisation, pruning)."""

    context: int = 16  # bytes of context the model sees
    embed_dim: int = 16  # embedding size per byte
    hidden: int = 512  # width of the hidden layers
    layers: int = 2  # number of hidden FactorizedDense layers
    gated: bool = True  # False trains the unpruned factorized baseline
    batch_size: int = 128
    steps: int = 3000
    learning_rate: float = 2e-3  # weights (AdamW)
    gate_learning_rate: float = 1e-2  # log_alpha (Adam); FLOP's gates need their own, larger rate
    lambda_learning_rate: float = 1e-2  # the two multipliers (Adam, ascent)
    clip_norm: float = 1.0
    target: float = 0.5  # target sparsity of the prunable weights
    target_warmup: int = 1000  # steps over which the target rises linearly from 0
    eval_every: int = 500
    corpus_bytes: int = 1_000_000
    seed: int = 0
    plan: fp.Plan = fp.Plan()

    def __post_init__(self):
        positive = ("context", "embed_dim", "hidden", "layers", "batch_size", "steps", "eval_every", "corpus_bytes")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"DemoConfig: {name}={getattr(self, name)} must be >= 1.")
        if not 0 <= self.target < 1:
            raise ValueError(f"DemoConfig: target={self.target} must be in [0, 1).")
        if self.target_warmup < 0:
            raise ValueError(f"DemoConfig: target_warmup={self.target_warmup} must be >= 0.")


class ByteMLP(nn.Module):
    """Next-byte model: ``[batch, context]`` bytes -> ``[batch, 256]`` logits."""

    config: DemoConfig

    @nn.compact
    def __call__(self, ctx: jax.Array, deterministic: bool = True) -> jax.Array:
        c = self.config
        h = nn.Embed(256, c.embed_dim, name="embed")(ctx).reshape(ctx.shape[0], -1)  # [batch, context*embed]
        for i in range(c.layers):
            h = nn.gelu(fp.FactorizedDense(c.hidden, gated=c.gated, plan=c.plan, name=f"hidden_{i}")(h, deterministic))
        return fp.FactorizedDense(256, gated=c.gated, plan=c.plan, name="out")(h, deterministic)


def windows(data: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``(context bytes, next byte)`` pairs of a byte array."""
    ctx = np.lib.stride_tricks.sliding_window_view(data[:-1], context)  # [n - context, context]
    return ctx, data[context:]


def _sample_batch(key: jax.Array, data: jax.Array, context: int, batch: int) -> tuple[jax.Array, jax.Array]:
    start = jax.random.randint(key, (batch,), 0, data.shape[0] - context)
    take = jax.vmap(lambda s: jax.lax.dynamic_slice(data, (s,), (context + 1,)))(start)  # [batch, context+1]
    return take[:, :-1].astype(jnp.int32), take[:, -1].astype(jnp.int32)


def make_eval_fn(model: ByteMLP, chunk: int = 8192) -> Callable[[dict, np.ndarray], float]:
    """Bits per byte over every position of a split, with deterministic masks."""

    @jax.jit
    def nll_sum(params, ctx, y, weight):
        logits = model.apply({"params": params}, ctx, deterministic=True)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * weight)

    def evaluate(params, data: np.ndarray) -> float:
        ctx, y = windows(data, model.config.context)
        total = 0.0
        for i in range(0, len(y), chunk):
            c, t = ctx[i : i + chunk], y[i : i + chunk]
            pad = chunk - len(t)
            w = np.concatenate([np.ones(len(t), np.float32), np.zeros(pad, np.float32)])
            c = np.pad(c, ((0, pad), (0, 0))).astype(np.int32)
            t = np.pad(t, (0, pad)).astype(np.int32)
            total += float(nll_sum(params, c, t, w))
        return LOG2E * total / len(y)

    return evaluate


def train(cfg: DemoConfig, data: dict[str, np.ndarray], log: Callable[[str], None] = print) -> dict:
    """Trains with FLOP (or the unpruned baseline) and returns params and metrics."""
    model = ByteMLP(cfg)
    init_key, train_key = jax.random.split(jax.random.key(cfg.seed))
    params = model.init({"params": init_key}, jnp.zeros((1, cfg.context), jnp.int32))["params"]
    trainable = {"params": params, "lagrangian": fp.init_multipliers()}
    tx = fp.flop_optimizer(cfg.learning_rate, cfg.gate_learning_rate, cfg.lambda_learning_rate, clip_norm=cfg.clip_norm)
    opt_state = tx.init(trainable)
    target_fn = fp.target_schedule(cfg.target, cfg.target_warmup)
    train_data = jnp.asarray(data["train"])

    def loss_fn(tr, ctx, y, gate_key, step):
        logits = model.apply({"params": tr["params"]}, ctx, deterministic=False, rngs={"gates": gate_key})
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
        if not cfg.gated:
            return ce, (ce, jnp.zeros(()), jnp.zeros(()))
        s = fp.expected_sparsity(tr["params"], cfg.plan.gate)
        t = target_fn(step)
        return ce + fp.penalty(s, t, tr["lagrangian"]), (ce, s, t)

    @jax.jit
    def step_fn(tr, opt_state, step):
        batch_key, gate_key = jax.random.split(jax.random.fold_in(train_key, step))
        ctx, y = _sample_batch(batch_key, train_data, cfg.context, cfg.batch_size)
        grads, (ce, s, t) = jax.grad(loss_fn, has_aux=True)(tr, ctx, y, gate_key, step)
        updates, opt_state = tx.update(grads, opt_state, tr)
        return optax.apply_updates(tr, updates), opt_state, {"bpc": ce * LOG2E, "expected": s, "target": t}

    evaluate = make_eval_fn(model)
    history = []
    start = time.perf_counter()
    for step in range(cfg.steps):
        trainable, opt_state, metrics = step_fn(trainable, opt_state, step)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            m = {k: float(v) for k, v in metrics.items()}
            m.update(step=step + 1, valid_bpc=evaluate(trainable["params"], data["valid"]))
            if cfg.gated:
                m.update(
                    hard=float(fp.hard_sparsity(trainable["params"], cfg.plan.gate)),
                    lambda_1=float(trainable["lagrangian"]["lambda_1"]),
                    lambda_2=float(trainable["lagrangian"]["lambda_2"]),
                )
            history.append(m)
            extra = (
                f" | sparsity expected {m['expected']:.3f} hard {m['hard']:.3f} target {m['target']:.3f}"
                f" | lambda {m['lambda_1']:+.3f} {m['lambda_2']:+.3f}"
                if cfg.gated
                else ""
            )
            log(
                f"step {m['step']:>6} | train bpc (sampled gates) {m['bpc']:.3f} | "
                f"valid bpc (eval mask) {m['valid_bpc']:.3f}{extra} | {time.perf_counter() - start:.0f}s"
            )
    return {"params": trainable["params"], "history": history, "model": model}


def time_apply(model: nn.Module, params: dict, ctx: np.ndarray, repeats: int = 30) -> float:
    """Median seconds of one jitted deterministic forward pass."""
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, deterministic=True))
    fn(params, ctx).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(params, ctx).block_until_ready()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """The whole demo: train with FLOP, shrink, verify, time, summarise."""
    corpus = stdlib_text(cfg.corpus_bytes)
    data = split_bytes(corpus)
    log(
        f"corpus: {len(corpus):,} bytes of Python standard-library source "
        f"(train {len(data['train']):,} / valid {len(data['valid']):,} / test {len(data['test']):,})"
    )
    result = train(cfg, data, log)
    model, params = result["model"], result["params"]
    evaluate = make_eval_fn(model)
    summary = {
        "valid_bpc": evaluate(params, data["valid"]),
        "test_bpc": evaluate(params, data["test"]),
        "params_before": fp.total_params(params),
    }
    if cfg.gated:
        summary["hard_sparsity"] = float(fp.hard_sparsity(params, cfg.plan.gate))
        small, small_cfg = fp.shrink(params, cfg)
        small_model = ByteMLP(small_cfg)
        small_eval = make_eval_fn(small_model)
        ctx = windows(data["test"], cfg.context)[0][:4096].astype(np.int32)
        gated_out = model.apply({"params": params}, ctx, deterministic=True)
        small_out = jax.jit(small_model.apply)({"params": small}, ctx)
        summary.update(
            params_after=fp.total_params(small),
            reduced_test_bpc=small_eval(small, data["test"]),
            max_abs_diff=float(jnp.max(jnp.abs(gated_out - small_out))),
            seconds_before=time_apply(model, params, ctx),
            seconds_after=time_apply(small_model, small, ctx),
        )
        summary["speedup"] = summary["seconds_before"] / summary["seconds_after"]
        log("\n" + fp.format_report(fp.report(small, cfg.plan.gate, small_cfg.plan)))
        log(
            f"\nparams {summary['params_before']:,} -> {summary['params_after']:,} "
            f"(hard sparsity of prunable weights {summary['hard_sparsity']:.3f}, target {cfg.target})\n"
            f"test bpc: gated model (eval mask) {summary['test_bpc']:.4f}, reduced model "
            f"{summary['reduced_test_bpc']:.4f} (max |logit diff| {summary['max_abs_diff']:.1e})\n"
            f"inference, batch {len(ctx)}: {summary['seconds_before'] * 1e3:.2f} ms -> "
            f"{summary['seconds_after'] * 1e3:.2f} ms, speedup x{summary['speedup']:.2f}"
        )
        summary["small_params"], summary["small_config"] = small, small_cfg
    summary.update(params=params, history=result["history"])
    return summary
