"""GLUE tasks as a tfds dataset, read from the standard ``glue_data`` folders.

FLOP (Wang, Wohlwend & Lei, EMNLP 2020, Section 4.2) prunes BERT fine-tuned
on GLUE. The inputs are the TSV files the GLUE download script
(``download_glue_data.py``) writes, one folder per task::

    <manual_dir>/CoLA/{train,dev}.tsv       no header; label col 1, sentence col 3
    <manual_dir>/SST-2/{train,dev}.tsv      sentence, label
    <manual_dir>/MRPC/{train,dev}.tsv       Quality, #1 ID, #2 ID, #1 String, #2 String
    <manual_dir>/STS-B/{train,dev}.tsv      10 columns: sentence1 7, sentence2 8, score 9
    <manual_dir>/QQP/{train,dev}.tsv        id, qid1, qid2, question1, question2, is_duplicate
    <manual_dir>/MNLI/train.tsv, dev_matched.tsv, dev_mismatched.tsv
                                            sentence1 8, sentence2 9, gold label last
    <manual_dir>/{QNLI,RTE,WNLI}/{train,dev}.tsv   index, sentence1, sentence2, label

``GLUE_TASKS`` holds those layouts (column indices as the download script's
consumers, BERT's ``run_classifier.py`` and Hugging Face's GLUE processors,
read them), the label names, the dev splits and the metrics. Files are read as
``utf-8-sig`` (MRPC's start with a byte-order mark) and split on tabs with no
quoting (``csv.QUOTE_NONE``: sentences hold unbalanced quotes). Every row must
have as many columns as the header (or, for headerless CoLA, as the table
says); a row that does not raises, naming the file and the line.

Splits: ``train`` and ``dev``; for MNLI ``dev`` is ``dev_matched.tsv`` and
there is also ``dev_mismatched``. Test files carry no labels and are not read.

Features: ``{'idx': int32 (the row's position in its file, from 0),
'sentence1': Text, 'sentence2': Text ('' for single-sentence tasks),
'label': ClassLabel (int64) or float32 for STS-B's regression}``. Label
strings map to ids in ``label_names`` order (MNLI: contradiction 0, entailment
1, neutral 2, as in BERT's ``MnliProcessor``). ``load_glue`` prepares the
dataset if needed and reads it back through ``as_data_source`` (array_record,
no TensorFlow).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from flaxprune.data import builder_inputs

__all__ = [
    "GLUE_TASKS",
    "Glue",
    "GlueConfig",
    "GlueTask",
    "describe_source",
    "get_task",
    "glue_files",
    "load_glue",
    "read_glue_tsv",
]

_BINARY = ("0", "1")


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """How one GLUE task's files are laid out and scored.

    Attributes:
      name: the tfds config name, lower case without dashes (``'sst2'``).
      folder: the task's folder in ``glue_data`` (``'SST-2'``).
      sentence1: column of the first sentence (negative counts from the end).
      sentence2: column of the second sentence; None for single-sentence tasks.
      label: column of the label.
      label_names: the label strings in id order; None for regression.
      header: whether the files start with a header row.
      num_columns: columns per row of a headerless file (with a header, rows
        must be as wide as the header instead: MNLI's train and dev differ).
      splits: ``(split, file name)`` pairs, train first.
      metrics: the metrics GLUE reports (names in ``glue_metrics``).
      primary_metric: the one number the GLUE leaderboard shows.
    """

    name: str
    folder: str
    sentence1: int
    sentence2: int | None
    label: int
    label_names: tuple[str, ...] | None
    header: bool = True
    num_columns: int | None = None
    splits: tuple[tuple[str, str], ...] = (("train", "train.tsv"), ("dev", "dev.tsv"))
    metrics: tuple[str, ...] = ("accuracy",)
    primary_metric: str = "accuracy"

    @property
    def num_labels(self) -> int:
        """The number of classes; 1 for regression (STS-B)."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def is_pair(self) -> bool:
        return self.sentence2 is not None

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.splits)

    @property
    def dev_splits(self) -> tuple[str, ...]:
        """The evaluation splits: ``('dev',)``, or ``('dev', 'dev_mismatched')`` for MNLI."""
        return tuple(s for s, _ in self.splits if s != "train")


_ACC_F1 = {"metrics": ("accuracy", "f1", "accuracy_and_f1"), "primary_metric": "accuracy_and_f1"}

GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask(
            "cola", "CoLA", sentence1=3, sentence2=None, label=1, label_names=_BINARY, header=False, num_columns=4,
            metrics=("matthews_correlation",), primary_metric="matthews_correlation",
        ),
        GlueTask("sst2", "SST-2", sentence1=0, sentence2=None, label=1, label_names=_BINARY),
        GlueTask("mrpc", "MRPC", sentence1=3, sentence2=4, label=0, label_names=_BINARY, **_ACC_F1),
        GlueTask(
            "stsb", "STS-B", sentence1=7, sentence2=8, label=9, label_names=None,
            metrics=("pearson", "spearman", "pearson_and_spearman"), primary_metric="pearson_and_spearman",
        ),
        GlueTask("qqp", "QQP", sentence1=3, sentence2=4, label=5, label_names=_BINARY, **_ACC_F1),
        GlueTask(
            "mnli", "MNLI", sentence1=8, sentence2=9, label=-1, label_names=("contradiction", "entailment", "neutral"),
            splits=(("train", "train.tsv"), ("dev", "dev_matched.tsv"), ("dev_mismatched", "dev_mismatched.tsv")),
        ),
        GlueTask("qnli", "QNLI", sentence1=1, sentence2=2, label=3, label_names=("entailment", "not_entailment")),
        GlueTask("rte", "RTE", sentence1=1, sentence2=2, label=3, label_names=("entailment", "not_entailment")),
        GlueTask("wnli", "WNLI", sentence1=1, sentence2=2, label=3, label_names=_BINARY),
    )
}  # fmt: skip


def get_task(task: str) -> GlueTask:
    """Looks a task up by config name or folder name, in any case (``'sst2'``, ``'SST-2'``).

    Raises:
      ValueError: for an unknown task, listing the accepted ones.
    """
    key = str(task).lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        accepted = ", ".join(f"{t.name} ({t.folder})" for t in GLUE_TASKS.values())
        raise ValueError(f"glue: task={task!r} is not a GLUE task; accepted: {accepted}.")
    return GLUE_TASKS[key]


def glue_files(task: str | GlueTask, manual_dir: str | os.PathLike) -> dict[str, epath.Path]:
    """The task's input files in ``manual_dir``, by split.

    Args:
      task: a task name (see ``get_task``) or a ``GlueTask``.
      manual_dir: the folder holding ``<TASK>/train.tsv`` (the GLUE download
        script's ``glue_data``).

    Returns:
      ``{split: path}`` for every split of the task.

    Raises:
      ValueError: for an unknown task.
      FileNotFoundError: if a file is missing, naming its path.
    """
    task = task if isinstance(task, GlueTask) else get_task(task)
    folder = epath.Path(manual_dir) / task.folder
    files = {split: folder / name for split, name in task.splits}
    missing = [os.fspath(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"glue({task.name}): missing {', '.join(missing)}; the manual dir must hold the GLUE download "
            f"script's layout, {task.folder}/{{{', '.join(n for _, n in task.splits)}}}."
        )
    return files


def describe_source(task: str | GlueTask, manual_dir: str | os.PathLike) -> dict[str, dict[str, object]]:
    """The record kept in ``info.metadata['source']``: per split, file and size in bytes."""
    task = task if isinstance(task, GlueTask) else get_task(task)
    return {
        split: {"file": f"{task.folder}/{path.name}", "bytes": path.stat().length}
        for split, path in glue_files(task, manual_dir).items()
    }


def read_glue_tsv(task: str | GlueTask, path: str | os.PathLike) -> Iterator[dict[str, object]]:
    """Reads one GLUE TSV file as examples, in file order.

    Args:
      task: a task name or ``GlueTask``: the file's layout.
      path: the file.

    Yields:
      ``{'idx': row number from 0, 'sentence1': str, 'sentence2': str ('' for
      single-sentence tasks), 'label': int id, or float for regression}``.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: for a row with the wrong number of columns, an unknown label
        or a non-numeric score (naming the file and the 1-based line), or an
        empty file where a header is expected.
    """
    task = task if isinstance(task, GlueTask) else get_task(task)
    path = epath.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"glue({task.name}): {path} does not exist.")
    label_ids = {name: i for i, name in enumerate(task.label_names or ())}
    # utf-8-sig drops MRPC's byte-order mark; newline='' is what csv asks for.
    with open(os.fspath(path), encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        width = task.num_columns
        if task.header:
            header = next(reader, None)
            if header is None:
                raise ValueError(f"glue({task.name}): {path} is empty; expected a header row.")
            width = len(header)
            needed = [c for c in (task.sentence1, task.sentence2, task.label) if c is not None]
            if not all(-width <= c < width for c in needed):
                raise ValueError(
                    f"glue({task.name}): {path}:1: the header has {width} columns, but the task reads "
                    f"columns {needed}; is this the {task.folder} file?"
                )
        for idx, row in enumerate(reader):
            where = f"{path}:{reader.line_num}"
            if len(row) != width:
                raise ValueError(
                    f"glue({task.name}): {where}: expected {width} tab-separated columns, got {len(row)}."
                )
            raw = row[task.label].strip()
            if task.is_regression:
                try:
                    label = float(raw)
                except ValueError:
                    raise ValueError(f"glue({task.name}): {where}: label {raw!r} is not a number.") from None
            elif raw in label_ids:
                label = label_ids[raw]
            else:
                raise ValueError(f"glue({task.name}): {where}: label {raw!r} is not one of {task.label_names}.")
            yield {
                "idx": idx,
                "sentence1": row[task.sentence1],
                "sentence2": row[task.sentence2] if task.is_pair else "",
                "label": label,
            }


@dataclasses.dataclass
class GlueConfig(tfds.core.BuilderConfig):
    """One GLUE task; ``name`` is its key in ``GLUE_TASKS``."""


class Glue(tfds.core.GeneratorBasedBuilder):
    """The GLUE tasks from local TSV files (see the module docstring)."""

    # tfds derives this from importlib_resources, a package it uses but does not
    # install; this is the value it would compute (no checksums file beside it).
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "train and dev splits from glue_data TSV files."}
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        GlueConfig(name=t.name, description=f"GLUE {t.folder}.") for t in GLUE_TASKS.values()
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Run GLUE's download_glue_data.py and pass its output folder (glue_data, the one holding "
        "CoLA/, SST-2/, MRPC/, STS-B/, QQP/, MNLI/, QNLI/, RTE/, WNLI/) as the manual dir."
    )

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        # array_record, not tfds' default tfrecord: its writer and the random-access
        # reader (as_data_source) need no TensorFlow.
        super().__init__(file_format=file_format, **kwargs)

    @property
    def task(self) -> GlueTask:
        return GLUE_TASKS[self.builder_config.name]

    def _info(self) -> tfds.core.DatasetInfo:
        task = self.task
        label = np.float32 if task.is_regression else tfds.features.ClassLabel(names=task.label_names)
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"GLUE {task.folder}, from the GLUE download script's TSV files.",
            features=tfds.features.FeaturesDict(
                {
                    "idx": np.int32,  # row position in its file, from 0
                    "sentence1": tfds.features.Text(),
                    "sentence2": tfds.features.Text(),  # '' for single-sentence tasks
                    "label": label,
                }
            ),
            homepage="https://gluebenchmark.com/",
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # keep file order, so idx i is record i
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = builder_inputs.manual_dir(dl_manager, "glue")
        files = glue_files(self.task, manual_dir)
        self.info.metadata["source"] = describe_source(self.task, manual_dir)
        return {split: self._generate_examples(path) for split, path in files.items()}

    def _generate_examples(self, path: epath.Path) -> Iterator[tuple[int, dict[str, object]]]:
        for example in read_glue_tsv(self.task, path):
            yield example["idx"], example


def load_glue(
    task: str,
    data_dir: str | os.PathLike,
    manual_dir: str | os.PathLike | None = None,
) -> dict[str, tuple[list[str], list[str] | None, np.ndarray]]:
    """Loads a GLUE task's splits, preparing its tfds dataset if needed.

    A prepared dataset is reused. Passing a ``manual_dir`` whose files differ
    (by name or size) from the ones ``data_dir`` was prepared from raises
    rather than serving the old data; use a fresh ``data_dir`` per input.

    Args:
      task: a task name (``'sst2'`` or ``'SST-2'``; see ``GLUE_TASKS``).
      data_dir: where tfds keeps prepared datasets.
      manual_dir: the folder holding ``<TASK>/train.tsv``; needed the first
        time (by default tfds looks in ``<data_dir>/downloads/manual``).

    Returns:
      ``{split: (sentences1, sentences2, labels)}`` for ``task.split_names``:
      ``sentences2`` is None for single-sentence tasks; ``labels`` is
      ``[n]`` int32 class ids, or float32 scores for STS-B. Rows are in file
      order.

    Raises:
      ValueError: for an unknown task, a malformed file, a split file with no
        example, or a ``manual_dir`` that differs from the prepared data's
        source.
      FileNotFoundError: for a missing input file, naming its path.
    """
    spec = get_task(task)
    builder = Glue(config=spec.name, data_dir=os.fspath(data_dir))
    expected = None
    if manual_dir is not None or not builder.is_prepared():
        where = manual_dir if manual_dir is not None else epath.Path(data_dir) / "downloads" / "manual"
        expected = describe_source(spec, where)  # raises for missing files, before preparing
    if not builder.is_prepared():
        _check_not_empty(spec, where)  # tfds would fail on an empty split with an AssertionError
        config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir) if manual_dir is not None else None)
        builder.download_and_prepare(download_config=config)
    recorded = builder.info.metadata.get("source")
    if expected is not None and recorded != expected:
        raise ValueError(
            f"load_glue({task!r}): {builder.data_dir} was prepared from {recorded}, but the manual_dir now "
            f"holds {expected}. Use a fresh data_dir for a different input (or delete that one)."
        )
    return {split: _read_split(builder, split, spec) for split in spec.split_names}


def _check_not_empty(task: GlueTask, manual_dir: str | os.PathLike) -> None:
    """Raises a ValueError naming a split file that holds no example (a header at most)."""
    for split, path in glue_files(task, manual_dir).items():
        if next(iter(read_glue_tsv(task, path)), None) is None:
            raise ValueError(
                f"load_glue({task.name!r}): {path} holds no examples{' (only a header)' if task.header else ''}; "
                f"the {split} split needs at least one."
            )


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_split(builder: Glue, split: str, task: GlueTask) -> tuple[list[str], list[str] | None, np.ndarray]:
    source = builder.as_data_source(split=split)
    examples = sorted(source.__getitems__(range(len(source))), key=lambda ex: int(ex["idx"]))
    sentences1 = [_text(ex["sentence1"]) for ex in examples]
    sentences2 = [_text(ex["sentence2"]) for ex in examples] if task.is_pair else None
    dtype = np.float32 if task.is_regression else np.int32
    labels = np.asarray([ex["label"] for ex in examples], dtype=dtype)  # [n]
    return sentences1, sentences2, labels
