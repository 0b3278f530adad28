"""Every checkpoint of the project, in one module, on a local path or an object-store URL
(`shards.location`):

- model checkpoints that know what they hold: which model (ElasticAST or the AST baseline, with its
  settings), its labels and the features it was trained on, so that one file rebuilds the model
  (`model_from_checkpoint`) and serves it with the right features (`elasticast.Classifier`).
  Every model of the project is built here (`make_model`), fresh or from a checkpoint;
- training states (`CheckpointStore`): one file per stream position,
  `epoch-EEEE-step-SSSSSSS.pt` (S: the batches of the epoch's plan consumed, all ranks together,
  i.e. the next step to run times the ranks; a resume on another number of ranks continues it),
  so the latest is the greatest name; the store keeps the `keep` latest, and needs room for
  `keep` + 1 of them while it writes one (the new one is complete before the oldest goes); on a
  full disk it removes the oldest first and tries again, so room for `keep` is enough. `usable()`
  verifies the latest before a resume: one that does not load is named and moved aside
  (`NAME.unreadable`), and the previous one is used;
- writes to the run folder that are complete or invisible, and fail once, clearly, when retrying
  cannot help (`RunStorageError`). A local file is written under a hidden temporary name, flushed
  and renamed into place; an object is written in one PUT, which the store applies whole or not at all.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import torch

from elasticast.ast_baseline import ASTBaseline
from elasticast.config import MODEL_KINDS, POOLINGS, ModelConfig
from elasticast.model import ElasticAST
from loaders.feature_spec import FeatureSpec
from shards.location import TEMP_PREFIX, Location
from shards.retry import LOCAL_FAILURES, StorageFailure, causes

FORMAT = "elasticast-checkpoint"
FORMAT_VERSION = 3  # 3: the features' recipe and fixed length, the model's attention scaling and strides
READABLE_VERSIONS = (1, 2, FORMAT_VERSION)  # 2 lacks only what 3 added, which defaults to what 2 did

Model = ElasticAST | ASTBaseline


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint. `model`: kind, `ModelConfig` fields, and for AST its `target_frames`
    and `pooling`. `extra`: whatever the trainer stored (e.g. its configuration)."""

    model: dict
    state_dict: dict
    labels: list[str]
    features: FeatureSpec
    extra: dict

    @property
    def kind(self) -> str:
        return self.model["kind"]


def make_model(kind: str, config: ModelConfig, target_frames: int = 1024, pooling: str = "cls") -> Model:
    """A fresh model: ElasticAST, or the AST baseline at `target_frames` with `pooling`."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind {kind!r} is not one of {MODEL_KINDS}")
    return ASTBaseline(config, target_frames, pooling) if kind == "ast" else ElasticAST(config)


def describe_model(model: Model) -> dict:
    """What `make_model` needs to build `model` again."""
    description = {
        "kind": "ast" if isinstance(model, ASTBaseline) else "elasticast",
        "config": dataclasses.asdict(model.config),
    }
    if isinstance(model, ASTBaseline):
        description |= {"target_frames": model.target_frames, "pooling": model.pooling}
    return description


def save_checkpoint(
    path: str | os.PathLike | Location | BinaryIO,
    model: Model,
    labels: Sequence[str],
    features: FeatureSpec,
    extra: dict | None = None,
) -> None:
    """Everything inference needs in one `torch.save` dict, to a path, a URL (one PUT) or a binary
    file. `extra`: plain Python values and tensors only (loading uses `weights_only=True`)."""
    if len(labels) != model.config.num_classes:
        raise ValueError(f"{len(labels)} labels for a model with num_classes {model.config.num_classes}")
    content = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": describe_model(model),
        "state_dict": model.state_dict(),
        "labels": [str(label) for label in labels],
        "features": dataclasses.asdict(features),
        "extra": extra or {},
    }
    if hasattr(path, "write"):
        torch.save(content, path)
        return
    buffer = io.BytesIO()
    torch.save(content, buffer)
    Location.of(path).write_bytes(buffer.getvalue())  # complete or absent, local or remote


def read_torch(source: str | os.PathLike | Location, **load_options):
    """`torch.load` of a local file or an object (read whole, in one retried GET, then parsed)."""
    location = Location.of(source)
    if location.is_local:
        return torch.load(location.local, **load_options)
    return torch.load(io.BytesIO(location.read_bytes()), **load_options)


def load_checkpoint(path: str | os.PathLike | Location, device: str | torch.device = "cpu") -> Checkpoint:
    """The checkpoint at a path or URL, validated: a missing file or another format is refused by
    name. Version 1 files (before the model kind and features were recorded) are read too."""
    path = Location.of(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    raw = read_torch(path, map_location=device, weights_only=True)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an ElasticAST checkpoint (no format {FORMAT!r}); write it with save_checkpoint"
        )
    version = raw.get("format_version")
    if version == 1:
        raw = _from_version_1(raw)
    elif version not in READABLE_VERSIONS:
        raise ValueError(f"{path} has checkpoint format_version {version!r}; this code reads {READABLE_VERSIONS}")
    if raw["model"].get("kind") not in MODEL_KINDS or raw["model"].get("pooling", "cls") not in POOLINGS:
        raise ValueError(
            f"{path}: unknown model {raw['model'].get('kind')!r} (pooling {raw['model'].get('pooling')!r})"
        )
    return Checkpoint(raw["model"], raw["state_dict"], raw["labels"], FeatureSpec(**raw["features"]), raw["extra"])


def model_from_checkpoint(
    checkpoint: Checkpoint | str | os.PathLike | Location, device: str | torch.device = "cpu"
) -> Model:
    """The checkpoint's model with its weights, on `device`, in eval mode."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint, device)
    spec = checkpoint.model
    model = make_model(
        spec["kind"], ModelConfig(**spec["config"]), spec.get("target_frames", 1024), spec.get("pooling", "cls")
    )
    model.load_state_dict(checkpoint.state_dict)
    return model.to(device).eval()


def _from_version_1(raw: dict) -> dict:
    """Version 1 kept the model kind only in the trainer's config, and the features loose."""
    train = raw.get("extra", {}).get("train_config", {})
    model = {"kind": train.get("model", "elasticast"), "config": raw["config"]}
    if model["kind"] == "ast":
        model |= {"target_frames": train["target_frames"], "pooling": train["pooling"]}
    features = {
        "sample_rate": raw["sample_rate"],
        "mean": raw["fbank"]["mean"],
        "std": raw["fbank"]["std"],
        "compression": raw.get("compression", "shift"),
        "max_frames": train.get("max_frames", raw["config"]["max_frames"]),
        "multi_label": raw["multi_label"],
    }
    return {
        "model": model,
        "state_dict": raw["state_dict"],
        "labels": raw["labels"],
        "features": features,
        "extra": raw["extra"],
    }


# failures of the storage itself: an object store's refusals (no such bucket, no permission,
# read-only http:// included), a store unreachable for the whole time budget, a full or failing disk
STORAGE_REFUSALS = (FileNotFoundError, PermissionError, StorageFailure)
CHECKPOINT_NAME = re.compile(r"^epoch-(\d{4,})-step-(\d{7,})\.pt$")
CHECKPOINTS = "checkpoints"  # the run folder's subfolder of full training states
UNREADABLE = ".unreadable"  # suffix of a checkpoint moved aside because it does not load
KEEP_CHECKPOINTS = 2

Target = str | os.PathLike | Location


class RunStorageError(StorageFailure):
    """A write to the run folder failed for a reason a retry cannot fix (no space, no permission,
    no such bucket, a store that stayed unreachable)."""


class LabelMismatch(ValueError):
    """A training state whose label ids are not the data's (a shard set rebuilt under the same
    path): continuing would train the head's classes on other labels, and no retry changes that."""


def check_label_map(location: Target, saved: dict | None, current: dict[str, dict[str, int]]) -> None:
    """Refuse to continue the training state at `location` (its recorded `saved` label map, None
    before maps were recorded) on sources whose map (`loaders.sources.Sources.label_map`) differs."""
    if saved is None or saved == current:
        return

    def shown(labels: dict[str, int]) -> str:
        names = [name for name, _ in sorted(labels.items(), key=lambda item: item[1])]
        return ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")

    differ = [
        f"{source}: [{shown(saved.get(source, {}))}] (now [{shown(current.get(source, {}))}])"
        for source in sorted(set(saved) | set(current))
        if saved.get(source) != current.get(source)
    ]
    raise LabelMismatch(
        f"checkpoint {location} was trained on other label ids than --shards now give: {'; '.join(differ)}; "
        "resume on the shard sets as they were, or start a new run"
    )


@contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """A storage failure inside becomes a `RunStorageError` saying `what: reason`."""
    try:
        yield
    except BaseException as error:
        cause = storage_cause(error)
        if cause is not None:
            raise RunStorageError(f"{what}: {cause.strerror or cause}") from error
        raise


def storage_cause(error: BaseException) -> OSError | None:
    """The storage failure behind `error`, if any, the innermost (the store's own words): torch.save,
    for one, reports a failed write of its file object as a RuntimeError raised while handling the
    OSError, and `Location` re-raises a store's refusal with the URL in front."""
    found = [
        cause
        for cause in causes(error)
        if isinstance(cause, STORAGE_REFUSALS) or (isinstance(cause, OSError) and cause.errno in LOCAL_FAILURES)
    ]
    return found[-1] if found else None


def _no_space(error: BaseException) -> bool:
    return any(isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT) for c in causes(error))


def write_atomic(target: Target, write: Callable[[BinaryIO], None]) -> None:
    """`write(handle)` into `target`, complete or absent: locally through a temporary file that is
    fsynced and renamed, remotely into memory and then one PUT. A storage failure becomes a
    `RunStorageError` naming `target`."""
    location = Location.of(target)
    with storage_errors(f"cannot write {location}"):
        location.write(write)


def write_text(target: Target, text: str) -> None:
    write_atomic(target, lambda handle: handle.write(text.encode()))


def save_torch(target: Target, value) -> None:
    """torch.save through a Python file object, so that a failed write surfaces as its OSError."""
    write_atomic(target, lambda handle: torch.save(value, handle))


class CheckpointStore:
    """The training checkpoints of one run, in `folder` (a path or URL): the `keep` latest complete ones."""

    def __init__(self, folder: Target, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.folder, self.keep = Location.of(folder), keep

    @staticmethod
    def name(epoch: int, consumed: int) -> str:
        return f"epoch-{epoch:04d}-step-{consumed:07d}.pt"

    def complete(self) -> list[Location]:
        """Committed checkpoints, oldest first (temporary files of interrupted writes are not listed)."""
        found = [
            (tuple(map(int, m.groups())), name) for name in self.folder.names() if (m := CHECKPOINT_NAME.match(name))
        ]
        return [self.folder / name for _, name in sorted(found)]

    def latest(self) -> Location | None:
        complete = self.complete()
        return complete[-1] if complete else None

    def usable(self) -> Location | None:
        """The latest checkpoint that loads (each is read whole to verify it); a later one that does
        not is named on stderr and moved aside as `NAME.unreadable` (never listed again, kept for a
        look). None: no checkpoint loads."""
        for location in reversed(self.complete()):
            problem = self.problem(location)
            if problem is None:
                return location
            aside = location.parent / f"{location.name}{UNREADABLE}"
            print(
                f"checkpoint {location} is unreadable ({problem}): moved aside to {aside.name}; "
                "trying the one before it",
                file=sys.stderr,
                flush=True,
            )
            with storage_errors(f"cannot move {location} aside"):
                location.rename(aside)
        return None

    @classmethod
    def problem(cls, location: Location) -> str | None:
        """Why the checkpoint at `location` cannot be resumed from (None if it loads). A store that
        cannot be reached is raised, not blamed on the file."""
        try:
            state = cls.load(location)
        except StorageFailure:
            raise
        except Exception as error:  # torch.load's errors for a truncated or foreign file are many
            return f"{type(error).__name__}: {error}"
        return None if isinstance(state, dict) else f"holds {type(state).__name__}, not a training state"

    def save(self, state: dict, epoch: int, consumed: int) -> Location:
        """Commit `state` as the checkpoint at (epoch, plan batches consumed), then drop all but the `keep` latest.
        With no room for it (a full disk or quota), the oldest of `keep` >= 2 go first and the write
        is tried once more: room for `keep` states is then enough."""
        location = self.folder / self.name(epoch, consumed)
        try:
            save_torch(location, state)
        except RunStorageError as error:
            complete = self.complete()
            if not _no_space(error) or self.keep < 2 or len(complete) < self.keep:
                raise
            oldest = complete[: len(complete) - self.keep + 1]
            print(
                f"no room for checkpoint {location}: removing the oldest ({', '.join(c.name for c in oldest)}) first",
                file=sys.stderr,
                flush=True,
            )
            for old in oldest:
                with storage_errors(f"cannot remove {old}"):
                    old.remove()
            save_torch(location, state)
        self.prune()
        return location

    def prune(self) -> None:
        """Remove all but the `keep` latest checkpoints, and temporary files left by crashed writers.
        Only one process writes a run's checkpoints at a time (rank 0 of the one running attempt)."""
        leftovers = [self.folder / name for name in self.folder.names() if name.startswith(TEMP_PREFIX)]
        for location in self.complete()[: -self.keep] + leftovers:
            with storage_errors(f"cannot remove {location}"):
                location.remove()

    @staticmethod
    def load(location: Target) -> dict:
        return read_torch(location, weights_only=False)  # our own file: optimiser state, RNG states, history
