"""What a run checks of its directory before it writes anything: that it may resume there.

:func:`~flaxprune.training.loop.prepare` calls these on the ``--workdir``:
the directory is not a file and its ``reduced/`` is the run's own
(:func:`check_workdir`); a checkpoint there is of the same model
(:func:`check_existing_checkpoint`, naming the fields that differ); and a
resume keeps the run's config unless a change is allowed
(:func:`check_config_change`, which names the changed fields).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from flaxprune.serialization import to_tree
from flaxprune.training.checkpoint import (
    CheckpointStore,
    DamagedCheckpointError,
    is_interrupted_write,
    is_reduced_model,
    model_config_from_json,
)
from flaxprune.training.run_dir import RunFiles, config_changes, format_changes

__all__ = ["check_config_change", "check_existing_checkpoint", "check_workdir", "same_model_config"]


def check_workdir(workdir: pathlib.Path) -> None:
    """Refuses a workdir that is a file, or whose ``reduced/`` holds something the run did not write."""
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(f"workdir {workdir} is a file; --workdir is a run directory (new, or a run's).")
    reduced = RunFiles(workdir).reduced
    ours = reduced.is_dir() and (
        not any(reduced.iterdir()) or is_reduced_model(reduced) or is_interrupted_write(reduced)
    )
    if reduced.exists() and not ours:
        raise FileExistsError(
            f"{reduced} holds something other than this run's reduced model; the run writes its reduced model "
            "there at the end. Move it away, or use another --workdir."
        )


def check_config_change(workdir: pathlib.Path, config: Any, allow: bool) -> dict[str, tuple[Any, Any]]:
    """The changes from the run's ``config.json`` on a resume: refused unless ``allow``."""
    saved = RunFiles(workdir).config
    if not saved.is_file():
        return {}
    try:
        old = json.loads(saved.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{saved} is not valid JSON ({e}); restore it, or use another --workdir.") from None
    changes = config_changes(old, json.loads(config.to_json_best_effort()))
    if changes and not allow:
        raise ValueError(
            f"{workdir} holds a run of another config; resuming with this one would change "
            f"{format_changes(changes)}. Rerun with the config that made it, use another --workdir, or pass "
            "--allow_config_change (allow_config_change=True) to continue with the change, recorded in "
            f"{RunFiles(workdir).config_history.name}."
        )
    return changes


def check_existing_checkpoint(ckpt_dir: pathlib.Path, config: Any, model_config: Any) -> bool:
    """Whether ``ckpt_dir`` holds a checkpoint; refuses one of another model (a resume must rebuild the same shapes).

    The model config is read from the newest checkpoint whose metadata reads
    (a damaged one is reported when the run restores it).
    """
    if not (ckpt_dir.is_dir() and any(ckpt_dir.iterdir())):
        return False
    store = CheckpointStore(ckpt_dir, config.train.keep_checkpoints)
    try:
        saved = None
        for step in store.steps():
            try:
                saved = store.read_meta(step)["model_config"]
                break
            except (DamagedCheckpointError, KeyError):
                continue
        if not store.steps():
            return False
    finally:
        store.close()
    if saved is not None and not same_model_config(saved, model_config):
        raise ValueError(
            f"{ckpt_dir} holds a checkpoint of a different model config: {_model_difference(saved, model_config)}. "
            "Use a new --workdir, or the config that made it."
        )
    return True


def _model_difference(saved_json: str, model_config: Any) -> str:
    """The fields of the model config that differ, named (``d_model 16 -> 24``), not the two configs dumped."""
    try:
        saved = json.loads(saved_json)
    except ValueError:
        return "the saved one is not JSON"
    changes = config_changes(saved, to_tree(model_config))
    if not changes:
        try:
            model_config_from_json(saved_json)
        except ValueError as e:
            return f"the saved one cannot be loaded ({e})"
        return "they differ"
    return format_changes(changes)


def same_model_config(saved_json: str, config: Any) -> bool:
    """Whether a checkpoint's saved model config is ``config`` (fields added since take their defaults)."""
    try:
        return model_config_from_json(saved_json) == config
    except (ValueError, TypeError):
        return False
