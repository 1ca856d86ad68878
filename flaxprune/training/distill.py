"""Knowledge distillation from a finished dense fine-tuning run, for BERT on GLUE.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network"
(2015): the student matches the teacher's softened class probabilities, the
``T^2`` factor keeping their gradients on the scale of the hard-label loss;
and, as CoFiPruning's layer distillation (Xia, Zhong & Chen, "Structured
Pruning Learns Compact and Accurate Models", ACL 2022, Sec. 3.2) and
TinyBERT do, each encoder layer's output matches the teacher's. The
objective, ``config.distill`` naming its weights:

    loss = (1 - alpha) * task + alpha * KD + hidden_weight * H
    KD   = T^2 * KL(softmax(t / T) || softmax(s / T))     classification, the weighted mean over examples
    KD   = (s - t)^2                                       regression (num_labels == 1), the weighted mean
    H    = mean over layers l of (h_l^s - h_l^t)^2         averaged over hidden units, real tokens and examples

The teacher is the directory of a finished run of the same GLUE task
(``flaxprune.training.train``). It runs in eval mode (no dropout) inside the
student's jitted step, its params an argument of that step (replicated on
the mesh like the student's, never trained, never checkpointed, no gradient
through its outputs). Every checkpoint of a distilling run records the
teacher (its resolved path and a fingerprint of its params), and a resume
with another teacher is refused, so a resumed run stays bit-identical to an
uninterrupted one.

The pieces:

* :func:`kd_loss`, :func:`hidden_loss` -- the two terms, pure functions of arrays;
* :class:`Distillation` -- the weights and the teacher's module a task needs
  in its loss (:meth:`Distillation.objective` combines the terms);
* :func:`check_distill` -- the values of ``config.distill`` (no file read);
* :func:`load_teacher`, :class:`Teacher` -- the teacher's directory, checked
  against the student's task, and its params on the mesh;
* :func:`teacher_meta`, :func:`check_teacher_record` -- what a checkpoint
  records of the teacher, and the check of a resume against it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "DISTILL_DEFAULTS",
    "TEACHER_KEY",
    "Distillation",
    "Teacher",
    "check_distill",
    "check_teacher_record",
    "hidden_loss",
    "kd_loss",
    "load_teacher",
    "params_fingerprint",
    "prepare_distillation",
    "teacher_meta",
]

DISTILL_DEFAULTS = {"teacher": "", "alpha": 0.9, "temperature": 2.0, "hidden_weight": 0.0}  # config.distill's fields
TEACHER_KEY = "distill_teacher"  # checkpoint meta of a distilling run: {'path', 'fingerprint', 'step'}
_NO_TEACHER = "'' (no distillation) or the directory of a finished run (flaxprune.training.train)"


# --- The losses: pure functions of arrays ----------------------------------------------------------


def _weighted_mean(values: jax.Array, weight: jax.Array | None) -> jax.Array:
    """``sum(w * v) / sum(w)`` of ``[batch]`` values (their mean without weights; 0 when every weight is 0)."""
    if weight is None:
        return jnp.mean(values)
    w = jnp.asarray(weight, jnp.float32)  # [batch]
    return jnp.sum(w * values) / jnp.maximum(jnp.sum(w), jnp.finfo(jnp.float32).tiny)


def _check_shapes(fn: str, student: Any, teacher: Any) -> None:
    if jnp.shape(student) != jnp.shape(teacher):
        raise ValueError(
            f"{fn}: the student's outputs have shape {jnp.shape(student)} and the teacher's {jnp.shape(teacher)}; "
            "they must match (the same task, num_labels and hidden size)."
        )


def kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    temperature: float,
    weight: jax.Array | None = None,
    regression: bool = False,
) -> jax.Array:
    """The distillation term ``KD`` of one batch.

    Args:
      student_logits: ``[batch, num_labels]``.
      teacher_logits: ``[batch, num_labels]``, the same shape (no gradient is
        wanted through them: pass them through ``jax.lax.stop_gradient``).
      temperature: ``T`` > 0, the softening of both distributions
        (classification only).
      weight: ``[batch]`` example weights (e.g. 0 on padded rows); None: all 1.
      regression: a single output scored by squared error (STS-B) instead of
        classes.

    Returns:
      A scalar: ``T^2 * KL(softmax(t / T) || softmax(s / T))``, or
      ``(s - t)^2`` for regression, averaged over the examples by ``weight``.

    Raises:
      ValueError: if the shapes differ or ``temperature`` is not a number > 0.
    """
    _check_shapes("kd_loss", student_logits, teacher_logits)
    if regression:
        return _weighted_mean(jnp.square(student_logits[:, 0] - teacher_logits[:, 0]), weight)
    if not (_is_finite(temperature) and temperature > 0):
        raise ValueError(f"kd_loss: temperature={temperature!r} must be a finite number > 0.")
    log_p_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    log_p_teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)  # [batch]
    return temperature**2 * _weighted_mean(kl, weight)


def hidden_loss(
    student_states: Sequence[jax.Array],
    teacher_states: Sequence[jax.Array],
    attention_mask: jax.Array,
    weight: jax.Array | None = None,
) -> jax.Array:
    """The hidden-state term ``H``: per-layer mean squared error, averaged over the layers.

    Each layer's error is the squared difference averaged over the hidden
    units, then over the real tokens (``attention_mask``) of the batch, each
    token counting its example's ``weight``.

    Args:
      student_states: one ``[batch, time, hidden]`` array per encoder layer.
      teacher_states: the teacher's, as many and of the same shapes.
      attention_mask: ``[batch, time]``, 1 on real tokens, 0 on padding.
      weight: ``[batch]`` example weights; None: all 1.

    Returns:
      A scalar.

    Raises:
      ValueError: if the layer counts or shapes differ, or there is no layer.
    """
    if len(student_states) != len(teacher_states) or not student_states:
        raise ValueError(
            f"hidden_loss: the student has {len(student_states)} layer outputs and the teacher "
            f"{len(teacher_states)}; they must be as many, and at least one."
        )
    tokens = jnp.asarray(attention_mask, jnp.float32)  # [batch, time]
    if weight is not None:
        tokens = tokens * jnp.asarray(weight, jnp.float32)[:, None]
    total = jnp.maximum(jnp.sum(tokens), jnp.finfo(jnp.float32).tiny)
    errors = []
    for s, t in zip(student_states, teacher_states):
        _check_shapes("hidden_loss", s, t)
        per_token = jnp.mean(jnp.square(s.astype(jnp.float32) - t.astype(jnp.float32)), axis=-1)  # [batch, time]
        errors.append(jnp.sum(per_token * tokens) / total)
    return jnp.mean(jnp.stack(errors))


@dataclasses.dataclass(frozen=True)
class Distillation:
    """What a task's loss needs to distil, besides the teacher's params (an argument of the jitted step).

    Attributes:
      teacher_model: the teacher's Linen module, applied with ``deterministic=True``.
      alpha: the weight of ``KD``; the task loss gets ``1 - alpha``.
      temperature: ``T`` of the soft targets (classification).
      hidden_weight: the weight of ``H``; 0 computes no hidden states at all.
    """

    teacher_model: Any
    alpha: float = DISTILL_DEFAULTS["alpha"]
    temperature: float = DISTILL_DEFAULTS["temperature"]
    hidden_weight: float = DISTILL_DEFAULTS["hidden_weight"]

    @property
    def hidden(self) -> bool:
        """Whether the objective has the hidden-state term (the models then return their layers' outputs)."""
        return self.hidden_weight > 0

    def objective(
        self,
        task_loss: jax.Array,
        student: tuple[jax.Array, Sequence[jax.Array] | None],
        teacher: tuple[jax.Array, Sequence[jax.Array] | None],
        attention_mask: jax.Array,
        weight: jax.Array | None = None,
        regression: bool = False,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``(loss, parts)``: ``(1 - alpha) task + alpha KD + hidden_weight H`` and each term by name.

        Args:
          task_loss: the student's scalar loss on the labels.
          student: ``(logits, hidden_states)``; the states are None without the hidden term.
          teacher: the same, of the teacher, without gradient.
          attention_mask: ``[batch, time]``.
          weight: ``[batch]`` example weights; None: all 1.
          regression: the task has a single regression output.

        Returns:
          The loss and ``{'task_loss', 'distill_loss'}`` (and ``'hidden_loss'`` with the hidden term).
        """
        kd = kd_loss(student[0], teacher[0], self.temperature, weight, regression)
        loss = (1.0 - self.alpha) * task_loss + self.alpha * kd
        parts = {"task_loss": task_loss, "distill_loss": kd}
        if self.hidden:
            h = hidden_loss(student[1], teacher[1], attention_mask, weight)
            loss = loss + self.hidden_weight * h
            parts["hidden_loss"] = h
        return loss, parts


# --- The config: values first (no file read), then the teacher's directory --------------------------


def _is_finite(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def check_distill(config: Any) -> None:
    """Checks ``config.distill``'s values; reads no file (the teacher's directory is :func:`load_teacher`'s).

    A config without a ``distill`` section (the language models') does not
    distil; an unset field takes its :data:`DISTILL_DEFAULTS` value.

    Raises:
      ValueError: one line naming ``config.distill.<field>``, its value and
        what is accepted: an unknown field, a teacher that is not a string,
        ``alpha`` outside [0, 1], ``temperature`` not > 0, ``hidden_weight``
        < 0, or a teacher for a task other than GLUE.
    """
    if "distill" not in config:
        return
    d = config.distill
    unknown = sorted(set(d) - set(DISTILL_DEFAULTS))
    if unknown:
        raise ValueError(f"config.distill has unknown field(s) {unknown}; accepted: {list(DISTILL_DEFAULTS)}.")
    teacher, alpha, temperature, hidden_weight = (d.get(k, v) for k, v in DISTILL_DEFAULTS.items())
    if not isinstance(teacher, str):
        raise ValueError(f"config.distill.teacher={teacher!r} must be a string: {_NO_TEACHER}.")
    if not (_is_finite(alpha) and 0 <= alpha <= 1):
        raise ValueError(
            f"config.distill.alpha={alpha!r} must be a number in [0, 1]: the weight of the distillation term "
            "(the task loss gets 1 - alpha)."
        )
    if not (_is_finite(temperature) and temperature > 0):
        raise ValueError(
            f"config.distill.temperature={temperature!r} must be a finite number > 0: the softening of the "
            "teacher's and the student's class probabilities (1: none; e.g. 2.0)."
        )
    if not (_is_finite(hidden_weight) and hidden_weight >= 0):
        raise ValueError(
            f"config.distill.hidden_weight={hidden_weight!r} must be a finite number >= 0: the weight of the "
            "per-layer hidden-state error (0: none)."
        )
    task = config.get("task", "lm")
    if teacher and task != "glue":
        raise ValueError(
            f"config.distill.teacher={teacher!r}: distillation is for BERT on GLUE (config.task='glue'), not "
            f"config.task={task!r}; accepted here: '' (no distillation)."
        )


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A finished run loaded as a teacher."""

    path: str  # its directory, resolved
    fingerprint: str  # SHA-256 over its params' checksums (params_fingerprint)
    step: int  # the step of the checkpoint its params come from
    model: Any  # the Linen module of its model
    model_config: Any  # that model's config
    params: Any  # its params, replicated on the mesh

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores of the teacher: ``{'path', 'fingerprint', 'step'}``."""
        return {"path": self.path, "fingerprint": self.fingerprint, "step": self.step}


def params_fingerprint(params: Any) -> str:
    """SHA-256 of a params tree's arrays (their dtypes, shapes and bytes, by path): the teacher's identity."""
    from flaxprune.training.checkpoint import array_checksums

    return hashlib.sha256(json.dumps(array_checksums(params), sort_keys=True).encode()).hexdigest()


def _vocab_digest(checkpoint: str) -> str | None:
    """SHA-256 of the ``vocab.txt`` of a BERT folder (``''``: the installed MiniLM), or None where there is none."""
    from flaxprune.models.bert_checkpoint import minilm_path

    folder = checkpoint or minilm_path()
    vocab = pathlib.Path(folder) / "vocab.txt" if folder else None
    if vocab is None or not vocab.is_file():
        return None
    return hashlib.sha256(vocab.read_bytes()).hexdigest()


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_teacher(config: Any, workdir: str | pathlib.Path, student_config: Any, mesh: Any) -> Teacher | None:
    """The teacher of ``config.distill.teacher`` (None without one), checked against the student; writes nothing.

    The teacher's params are those its run ended with (its ``best/``
    checkpoint when its summary says so, else its newest), put on ``mesh``
    replicated.

    Args:
      config: the student's experiment config (its values already checked by :func:`check_distill`).
      workdir: the student's run directory (which may not be the teacher's).
      student_config: the student's model config (a ``BertConfig``).
      mesh: the student's mesh.

    Raises:
      ValueError: one line naming ``config.distill.teacher``, its value and
        what is accepted, for a directory that is not a finished run, of
        another task or GLUE task, another number of labels, another
        vocabulary, too few positions for ``config.train.seq_len``, or (with
        the hidden term) other layer counts or hidden sizes.
    """
    value = config.distill.get("teacher", "") if "distill" in config else ""
    if not value:
        return None
    from flaxprune.data.glue import get_task
    from flaxprune.training import sharding
    from flaxprune.training.runs import load_run

    task = get_task(config.data.task).name
    path = pathlib.Path(value).expanduser().resolve()

    def refuse(why: str) -> ValueError:
        return ValueError(
            f"config.distill.teacher={value!r} {why}; accepted: '' (no distillation) or the directory of a "
            f"finished run of GLUE task {task!r}."
        )

    if path == pathlib.Path(workdir).expanduser().resolve():
        raise refuse("is this run's own directory")
    summary, saved = _finished_run(refuse, path, task)
    which = "best" if str(summary.get("final_params_from", "")).startswith("best") else "checkpoints"
    try:
        model, params, model_config, step = load_run(path, which)
    except (FileNotFoundError, ValueError) as e:
        raise refuse(f"has no readable checkpoint in {which}/ ({str(e).splitlines()[0]})") from None
    _check_compatible(refuse, model_config, student_config, config)
    mine = _vocab_digest(config.model.get("checkpoint", ""))
    theirs = _vocab_digest(saved.get("model", {}).get("checkpoint", ""))
    if mine is not None and theirs is not None and mine != theirs:
        raise refuse("tokenizes with another vocabulary (its model.checkpoint's vocab.txt differs from the student's)")
    fingerprint = params_fingerprint(params)
    params = jax.device_put(params, jax.tree.map(lambda _: sharding.replicated(mesh), params))
    return Teacher(str(path), fingerprint, int(step), model, model_config, params)


def _finished_run(refuse: Callable[[str], ValueError], path: pathlib.Path, task: str) -> tuple[dict, dict]:
    """``(summary, config)`` of the run in ``path``, refused unless it is a finished GLUE run of ``task``."""
    from flaxprune.data.glue import get_task
    from flaxprune.training.run_dir import RunFiles

    if not path.is_dir():
        raise refuse("is not a directory")
    files = RunFiles(path)
    summary, saved = _read_json(files.summary), _read_json(files.config)
    if not (isinstance(summary, dict) and summary.get("status") == "done" and isinstance(saved, dict)):
        raise refuse(
            f"is not a finished run (its {files.summary.name} does not say status 'done', or its "
            f"{files.config.name} is missing)"
        )
    if saved.get("task", "lm") != "glue":
        raise refuse(f"is a run of config.task={saved.get('task', 'lm')!r}, not 'glue'")
    named = saved.get("data", {}).get("task", "")
    try:
        named = get_task(named).name
    except ValueError:
        pass  # not a GLUE task: refused below by its name
    if named != task:
        raise refuse(f"is a run of GLUE task {named!r}, not the student's {task!r}")
    return summary, saved


def _check_compatible(refuse: Callable[[str], ValueError], teacher: Any, student: Any, config: Any) -> None:
    """The teacher's model against the student's: labels, vocabulary, positions (and layers, with the hidden term)."""
    fields = ["num_labels", "vocab_size"]
    if config.distill.get("hidden_weight", DISTILL_DEFAULTS["hidden_weight"]) > 0:
        fields += ["num_layers", "hidden_size"]  # H compares layer by layer, unit by unit
    for name in fields:
        if not hasattr(teacher, name):
            raise refuse(f"holds a {type(teacher).__name__}, not a BERT classifier")
        if getattr(teacher, name) != getattr(student, name):
            raise refuse(f"has {name}={getattr(teacher, name)}, the student {getattr(student, name)}")
    if teacher.max_position < config.train.seq_len:
        raise refuse(
            f"has max_position={teacher.max_position} < config.train.seq_len={config.train.seq_len}, too few "
            "positions for the student's sequences"
        )


def prepare_distillation(
    config: Any, workdir: str | pathlib.Path, task: Any, mesh: Any
) -> tuple[Any, Teacher | None]:
    """``(task, teacher)``: the task distilling from ``config.distill.teacher``, or ``(task, None)`` without one.

    Raises:
      ValueError: from :func:`load_teacher`.
    """
    teacher = load_teacher(config, workdir, task.model_config, mesh)
    if teacher is None:
        return task, None
    weights = {k: float(config.distill.get(k, DISTILL_DEFAULTS[k])) for k in ("alpha", "temperature", "hidden_weight")}
    return task.with_distillation(Distillation(teacher.model, **weights)), teacher


# --- The record: what a checkpoint keeps of the teacher, and a resume's check ----------------------


def teacher_meta(teacher: Teacher | None) -> dict[str, Any]:
    """The entries a checkpoint's meta gets: ``{TEACHER_KEY: record}``, or none without a teacher."""
    return {} if teacher is None else {TEACHER_KEY: teacher.record()}


def check_teacher_record(ckpt_dir: str | pathlib.Path, teacher: Teacher | None, keep: int) -> None:
    """Refuses a resume from ``ckpt_dir`` whose checkpoints were distilled from another teacher (or none).

    The teacher is the same when its params' fingerprint is (a moved
    directory is the same teacher; a retrained one at the same path is not).
    The record is read from the newest checkpoint whose meta reads.

    Raises:
      ValueError: one line naming both teachers.
    """
    from flaxprune.training.checkpoint import CheckpointStore, DamagedCheckpointError

    store = CheckpointStore(ckpt_dir, keep)
    try:
        meta = None
        for step in store.steps():
            try:
                meta = store.read_meta(step)
                break
            except DamagedCheckpointError:
                continue
    finally:
        store.close()
    if meta is None:
        return
    saved = meta.get(TEACHER_KEY)
    now = None if teacher is None else teacher.record()
    if (saved or {}).get("fingerprint") == (now or {}).get("fingerprint"):
        return

    def name(record: dict[str, Any] | None) -> str:
        if record is None:
            return "no teacher"
        return f"teacher {record['path']} (fingerprint {record['fingerprint'][:12]})"

    raise ValueError(
        f"{ckpt_dir} holds a run distilled from {name(saved)}, and config.distill.teacher now gives {name(now)}: a "
        "resume must keep its teacher. Rerun with the teacher that made it, or use another --workdir."
    )
