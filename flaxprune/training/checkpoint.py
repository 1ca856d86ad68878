"""Checkpoints and reduced models on disk: the one module that reads and writes them with orbax.

:class:`CheckpointStore` (training states), :func:`save_reduced` /
:func:`load_reduced` (a reduced model) and :func:`read_latest` (a
checkpoint restored as saved, without a target) are the only code that
touches orbax. Where they live in a run directory is
:mod:`flaxprune.training.run_dir`'s.

Trust: every checkpoint carries a SHA-256 of each array, verified on every
restore, and a damaged checkpoint is named, kept and skipped
(:class:`DamagedCheckpointError`); a model config is rebuilt from an
allow-list only (:func:`model_config_from_json`); a reduced model is written
only into a new or empty folder, or over an earlier reduced model when asked
(:func:`check_output`).

orbax writes each step to a temporary directory and renames it when
complete, so an interruption never leaves a half-written checkpoint that
looks valid. A training state is restored against an abstract target
(``jax.eval_shape`` of a fresh state) with the run's shardings: that is what
brings optax's NamedTuple states back as NamedTuples, and puts every array
on the mesh.
"""

from __future__ import annotations

import errno
import hashlib
import json
import pathlib
import shutil
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from flaxprune.models import CONFIG_CLASSES, model_for
from flaxprune.output_folder import check_output_folder
from flaxprune.serialization import config_from_json, config_to_json

__all__ = [
    "META_CHECKSUM_KEY",
    "CheckpointStore",
    "DamagedCheckpointError",
    "array_checksums",
    "check_output",
    "is_interrupted_write",
    "is_reduced_model",
    "meta_checksum",
    "load_reduced",
    "model_config_from_json",
    "read_latest",
    "save_reduced",
]


REDUCED_MARKER = "flaxprune_reduced.json"  # in a reduced model's folder: what wrote it
CHECKSUMS_KEY = "array_sha256"  # in every checkpoint's JSON meta: leaf path -> SHA-256 of the array
META_CHECKSUM_KEY = "meta_sha256"  # and the SHA-256 of the rest of the meta (data position, model config, ...)
ORBAX_TMP = ".orbax-checkpoint-tmp"  # in the name of a step orbax had not finished writing


class DamagedCheckpointError(ValueError):
    """A checkpoint that cannot be restored as saved: unreadable files or arrays that fail their checksums."""

    def __init__(self, directory: pathlib.Path, step: int, reason: str):
        self.directory, self.step, self.reason = directory, step, reason
        super().__init__(f"checkpoint step {step} in {directory} is damaged: {reason}")


def _path_name(path: tuple) -> str:
    """A leaf's path with container types dropped (``trainable/params/a/P``): the same for a restored
    ``TrainState`` and for the nested dicts an untargeted restore gives."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def array_checksums(tree: Any) -> dict[str, str]:
    """SHA-256 of every array's bytes (with its dtype and shape), by leaf path.

    Arrays that this process cannot see whole (sharded over several hosts)
    are left out: each host verifies what it restores of them by shape only.
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            continue
        a = np.asarray(jax.device_get(leaf))
        digest = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        digest.update(np.ascontiguousarray(a).tobytes())
        out[_path_name(path)] = digest.hexdigest()
    return out


def meta_checksum(meta: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's JSON meta, without its own checksum (keys sorted)."""
    body = {k: v for k, v in meta.items() if k != META_CHECKSUM_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_meta(directory: pathlib.Path, step: int, meta: dict[str, Any]) -> None:
    saved = meta.get(META_CHECKSUM_KEY)
    if saved is not None and saved != meta_checksum(meta):
        raise DamagedCheckpointError(directory, step, "its JSON metadata does not match its saved checksum")


def _check_checksums(directory: pathlib.Path, step: int, tree: Any, meta: dict[str, Any]) -> None:
    _check_meta(directory, step, meta)
    saved = meta.get(CHECKSUMS_KEY)
    if saved is None:
        return  # written before checksums existed: nothing to compare
    got = array_checksums(tree)
    bad = sorted(k for k in saved if k in got and got[k] != saved[k])
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DamagedCheckpointError(directory, step, f"array(s) {bad[:3]}{more} do not match their saved checksums")


def _reason(error: Exception) -> str:
    """The error's first line (tensorstore puts the useful part first, and a long tail after)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    first = lines[0][:300] if lines else "(no message)"
    return f"{type(error).__name__}: {first}{' ...' if len(lines) > 1 else ''}"


class CheckpointStore:
    """Keep-N checkpoints under ``directory``: a state pytree plus JSON metadata, checked on restore.

    Every save records a SHA-256 checksum of each array in the metadata;
    every restore recomputes them, so flipped bytes are caught, not trained
    on. A checkpoint that cannot be read or fails its checksums raises
    :class:`DamagedCheckpointError` naming the step and why;
    :meth:`restore_intact` then moves it aside (``<step>.damaged``, never
    deleted) and falls back to the newest intact one.
    """

    def __init__(self, directory: str | pathlib.Path, keep: int = 3):
        if keep < 1:
            raise ValueError(f"CheckpointStore: keep={keep} must be >= 1.")
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        """The steps on disk, newest first."""
        return sorted(self._manager.all_steps(), reverse=True)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves (with the arrays' checksums in the metadata) and waits until the checkpoint is complete on disk.

        A checkpoint of the same step left by an earlier attempt that crashed
        before its next regular checkpoint (so the run restarted from further
        back) is replaced: the run is deterministic, so it holds the same state.

        Raises:
          OSError: one line naming the directory when the disk is full (the
            earlier checkpoints stay intact).
        """
        meta = {**meta, CHECKSUMS_KEY: array_checksums(state)}
        meta[META_CHECKSUM_KEY] = meta_checksum(meta)
        if step in self._manager.all_steps():
            self._manager.delete(step)
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
            self._manager.wait_until_finished()
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            need = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes")) / 2**20
            free = shutil.disk_usage(self.directory).free / 2**20
            raise OSError(
                errno.ENOSPC,
                f"no space left on the device writing checkpoint step {step} to {self.directory}: it needs about "
                f"{need:,.1f} MiB, {free:,.1f} MiB are free. The earlier checkpoints are intact; free some space "
                "and rerun the same command to resume.",
            ) from None

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata of ``step`` (default: the newest).

        Raises:
          DamagedCheckpointError: when it cannot be read.
        """
        step = self.latest_step() if step is None else step
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax, tensorstore and json all have their own errors for a broken file
            raise DamagedCheckpointError(self.directory, step, _reason(e)) from e
        meta = dict(out["meta"])
        _check_meta(self.directory, step, meta)
        return meta

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores ``(state, meta)`` and verifies every array; ``abstract_state`` carries shapes, dtypes, shardings.

        ``abstract_state`` may also be a function of the step's metadata that
        returns the target: a run compacted during training saves states of
        different shapes, and its metadata says which model each one is.

        Raises:
          DamagedCheckpointError: when a file cannot be read or an array fails its checksum.
        """
        step = self.latest_step() if step is None else step
        if callable(abstract_state):
            abstract_state = abstract_state(self.read_meta(step))
        try:
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
            )
        except Exception as e:  # orbax, tensorstore and json all have their own errors for a broken file
            raise DamagedCheckpointError(self.directory, step, _reason(e)) from e
        state, meta = out["state"], dict(out["meta"])
        _check_checksums(self.directory, step, state, meta)
        return state, meta

    def restore_intact(self, abstract_state: Any, log: Callable[[str], None]) -> tuple[Any, dict[str, Any]] | None:
        """The newest checkpoint that restores intact; each damaged newer one is moved aside and reported.

        Returns:
          ``(state, meta)``, or None when the store holds no checkpoint.

        Raises:
          DamagedCheckpointError: when every checkpoint is damaged (all kept, renamed ``<step>.damaged``).
        """
        damaged = []
        for step in self.steps():
            try:
                restored = self.restore(abstract_state, step)
            except DamagedCheckpointError as e:
                damaged.append(e)
                log(f"{e}; kept as {self._set_aside(step)}, trying the one before.")
                continue
            if damaged:
                log(f"resuming from step {step}, the newest intact checkpoint in {self.directory}.")
            return restored
        if damaged:
            raise DamagedCheckpointError(
                self.directory,
                damaged[0].step,
                f"and so is every other checkpoint there ({', '.join(f'step {e.step}: {e.reason}' for e in damaged)})"
                "; they were kept as <step>.damaged. Start a new --workdir, or put back a copy of a good checkpoint.",
            )
        return None

    def _set_aside(self, step: int) -> pathlib.Path:
        """Renames a damaged step's directory so that no later save or clean-up removes it."""
        source = self.directory / str(step)
        target = self.directory / f"{step}.damaged"
        n = 1
        while target.exists():
            n += 1
            target = self.directory / f"{step}.damaged.{n}"
        _all_processes_here("flaxprune set_aside: named")  # every process names it before one renames it
        if jax.process_index() == 0:
            source.rename(target)
        _all_processes_here("flaxprune set_aside: renamed")
        self._manager.reload()
        return target

    def close(self) -> None:
        self._manager.close()


def read_latest(
    directory: str | pathlib.Path, with_meta: bool = True, log: Callable[[str], None] | None = None
) -> tuple[Any, dict[str, Any], int] | None:
    """``(state tree, meta, step)`` of the newest intact checkpoint in ``directory`` as saved, or None if none.

    Without a target, the state comes back as nested dicts of host arrays
    (NamedTuples as dicts): enough to read params, not to resume a run.
    Reading changes nothing on disk: a damaged checkpoint is reported
    (``log``, by default stderr) and skipped, not moved.

    Raises:
      DamagedCheckpointError: when every checkpoint there is damaged.
    """
    directory = pathlib.Path(directory).absolute()
    if not directory.is_dir():
        return None
    log = log or (lambda line: print(line, file=sys.stderr))
    manager = ocp.CheckpointManager(directory)
    damaged = []
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            args = {"state": ocp.args.StandardRestore(), "meta": ocp.args.JsonRestore()}
            try:
                out = manager.restore(step, args=ocp.args.Composite(**args))
                _check_checksums(directory, step, out["state"], dict(out["meta"]))
            except DamagedCheckpointError as e:
                damaged.append(e)
            except Exception as e:  # orbax, tensorstore and json all have their own errors for a broken file
                damaged.append(DamagedCheckpointError(directory, step, _reason(e)))
            else:
                for e in damaged:
                    log(f"{e}; skipped, using step {step}.")
                meta = dict(out["meta"]) if with_meta else {}
                meta.pop(CHECKSUMS_KEY, None)
                meta.pop(META_CHECKSUM_KEY, None)
                return out["state"], meta, int(step)
    finally:
        manager.close()
    if damaged:
        reasons = "; ".join(f"step {e.step}: {e.reason}" for e in damaged)
        raise DamagedCheckpointError(directory, damaged[0].step, f"and so is every other checkpoint there ({reasons})")
    return None


def model_config_from_json(text: str) -> Any:
    """A model config saved in a checkpoint's meta, rebuilt from the known config classes only.

    Loading never runs code: only :data:`flaxprune.models.CONFIG_CLASSES`
    (the model configs, ``Plan``, ``GateConfig``, the layer specs) are
    rebuilt, each through its own validation.

    Raises:
      ValueError: for any other class, an unknown field or an invalid value.
    """
    return config_from_json(text, CONFIG_CLASSES)


REDUCED_KIND = "flaxprune reduced model"  # what a reduced model's marker file says it is


def is_reduced_model(directory: str | pathlib.Path) -> bool:
    """Whether ``directory`` holds a reduced model written by :func:`save_reduced` (and nothing else).

    Recognised by its marker file, or, for folders written before the
    marker existed, by holding only orbax step ``0`` whose meta has a model
    config.
    """
    directory = pathlib.Path(directory)
    marker = directory / REDUCED_MARKER
    if marker.is_file():
        try:
            return json.loads(marker.read_text(encoding="utf-8")).get("kind") == REDUCED_KIND
        except (ValueError, AttributeError):
            return False
    if {p.name for p in directory.iterdir()} != {"0"}:
        return False
    meta = directory / "0" / "meta" / "metadata"
    try:
        return "model_config" in json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def is_interrupted_write(directory: str | pathlib.Path) -> bool:
    """Whether ``directory`` holds only steps orbax had not finished writing (a save killed midway)."""
    entries = list(pathlib.Path(directory).iterdir())
    return bool(entries) and all(ORBAX_TMP in p.name for p in entries)


def check_output(directory: str | pathlib.Path, overwrite: bool = False) -> None:
    """Refuses an output folder a reduced model may not be written to; writes nothing.

    A new or empty folder is fine; an earlier reduced model only with
    ``overwrite``; anything else (a run's ``checkpoints/``, a file, a folder
    of other files) never, so no command deletes what it did not create.

    Raises:
      FileExistsError: naming the folder, what is there, and what is accepted.
    """
    # rewritable: a reduced model whose save was killed midway, which the run rewrites as its own
    check_output_folder(
        directory, overwrite, what="a reduced model", is_ours=is_reduced_model, rewritable=is_interrupted_write
    )


def save_reduced(directory: str | pathlib.Path, params: Any, config: Any, overwrite: bool = False) -> None:
    """Saves a model's params and its config (JSON) as one orbax checkpoint; reloads without the original config.

    The folder must be new or empty, or (with ``overwrite``) an earlier
    reduced model, which is replaced only once the new one is complete.

    Raises:
      FileExistsError: from :func:`check_output`.
    """
    directory = pathlib.Path(directory).absolute()
    check_output(directory, overwrite)
    primary = jax.process_index() == 0  # with several processes every one writes the checkpoint, one moves files
    target = directory
    if directory.exists() and any(directory.iterdir()):  # an earlier reduced model: write beside it, then swap
        target = directory.with_name(f"{directory.name}.new")
        if primary and target.exists() and (is_reduced_model(target) or is_interrupted_write(target)):
            shutil.rmtree(target)  # our own leftover from an interrupted overwrite
    _all_processes_here("flaxprune save_reduced: checked")  # no process looks at the folder once one writes
    store = CheckpointStore(target, keep=1)
    store.save(0, jax.device_get(params), {"model_config": config_to_json(config)})
    store.close()
    if primary:
        _mark_and_swap(directory, target)
    _all_processes_here("flaxprune save_reduced: done")  # none returns (and reloads it) before it is in place


def _all_processes_here(name: str) -> None:
    """Waits until every process reaches ``name`` (nothing to wait for in a single process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _mark_and_swap(directory: pathlib.Path, target: pathlib.Path) -> None:
    """Marks the reduced model just written to ``target``; puts it in place of an earlier one at ``directory``."""
    (target / REDUCED_MARKER).write_text(json.dumps({"kind": REDUCED_KIND}), encoding="utf-8")
    if target != directory:
        old = directory.with_name(f"{directory.name}.old")
        if old.exists():
            if not is_reduced_model(old):
                raise FileExistsError(f"{old} is in the way of replacing {directory}; move it, then rerun.")
            shutil.rmtree(old)  # our own leftover from an interrupted overwrite
        directory.rename(old)
        target.rename(directory)
        shutil.rmtree(old)  # the earlier reduced model, replaced as asked


def load_reduced(directory: str | pathlib.Path) -> tuple[Any, Any, Any]:
    """``(model, params, config)`` from :func:`save_reduced`'s directory.

    The params come back with the shapes they were saved with; the config
    (with its plan) builds the module that takes them.

    Raises:
      FileNotFoundError: if there is no saved model there.
    """
    found = read_latest(directory)
    if found is None:
        raise FileNotFoundError(f"load_reduced: no saved model under {pathlib.Path(directory).absolute()}.")
    params, meta, _ = found
    config = model_config_from_json(meta["model_config"])
    return model_for(config), params, config
