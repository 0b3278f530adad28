"""One training configuration: dataclass defaults < YAML file (`--config`) < command-line flags.

Every field is a flag (`--max-tokens 1024`, `--scales 1.0 2.0 4.0`, `--no-shuffle`), so the
dataclass is the single list of knobs.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from elasticast.config import ATTENTION_BACKENDS, MODEL_KINDS, POOLINGS, PRESETS
from loaders.config import FEATURIZE, SAMPLINGS, WEIGHT_BY, StreamConfig
from loaders.pack import MODES
from loaders.tokens import COMPRESSIONS, RECIPES
from shards.location import Location
from shards.parallel import BACKENDS
from shards.retry import DEFAULT_TIMEOUT_S

CHOICES = {
    "preset": tuple(PRESETS),
    "model": MODEL_KINDS,
    "pooling": POOLINGS,
    "packing": MODES,
    "compression": COMPRESSIONS,
    "loader": BACKENDS,
    "schedule": ("cosine", "step", "constant"),
    "label_type": ("auto", "single", "multi"),
    "attention": ("auto", *ATTENTION_BACKENDS),
    "wandb": ("offline", "online", "disabled"),
    "device": ("auto", "cpu", "cuda"),
    "recipe": ("auto", *RECIPES),
    "weight_by": WEIGHT_BY,
    "featurize": FEATURIZE,
    "sampling": SAMPLINGS,
}


# What `--resume` may change: how and where the run goes on and what it logs. Every other setting
# (data, model, features, recipe, optimiser) decides what the run learns, so a resumed run must keep
# the one its config.yaml records (`TrainConfig.changed_on_resume`).
RESUMABLE = frozenset(
    {
        "resume",
        "out",  # a run folder moved elsewhere is still the run
        "epochs",
        "stop_after",
        "checkpoint_every",
        "workers",
        "device",
        "cpus_per_worker",
        "threads",
        "loader",
        "loader_workers",
        "loader_cpus",
        "featurize",
        "attention",
        "compile",
        "max_failures",
        "storage_timeout",
        "max_failed",
        "wandb",
        "wandb_project",
        "wandb_dir",
        "verbose",
    }
)


def knob(default, help: str):
    """A config field with its one help text (the flag's `--help`, and the doc of the field)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Defaults train the tiny preset on the demo shard set; `make demo` overrides them with
    examples/demo/elasticast.yaml and ast.yaml (tuned for accuracy within minutes on 2 CPU cores)."""

    # data and run
    shards: tuple[str, ...] = knob(
        ("data/demo",),
        "shard set made by elasticast-make-shards, a path or a URL; trains on its train split; "
        "several: a mix of their train splits (--weights), validated on each",
    )
    weights: tuple[float, ...] = knob(
        (), "a mix: each shard set's share of an epoch (none: in proportion to their sizes)"
    )
    weight_by: str = knob("samples", "what --weights measure: samples, duration (seconds of audio) or tokens")
    valid_split: str = knob(
        "auto",
        "split validated on (and best.pt chosen by); auto: valid if the shard set has one, else test with a warning",
    )
    out: str = knob(
        "runs/demo",
        "run folder, a path or a URL (s3://bucket/runs/x): checkpoints, history, metrics, wandb and Ray Train state",
    )
    epochs: int = knob(6, "epochs in all; the learning-rate schedule spans them")
    seed: int = knob(0, "fixes initial weights, data order, resolutions and masks")
    resume: bool = knob(False, "continue the run in --out from its latest checkpoint")
    checkpoint_every: int = knob(
        0, "also checkpoint every this many training steps (0: at epoch ends only); --resume continues at that step"
    )
    stop_after: int = knob(
        0, "end this invocation after this many epochs in all (0: run to --epochs); the schedule still follows --epochs"
    )
    # model
    preset: str = knob("tiny", "model size: tiny, small or base (ViT-B/16)")
    depth: int = knob(0, "transformer blocks (0: the preset's)")
    model: str = knob("elasticast", "elasticast (packed, any length) or ast (the fixed-size baseline)")
    target_frames: int = knob(1024, "ast only: every sample cropped or zero-padded to this many frames")
    pooling: str = knob(
        "cls",
        "ast only: the head reads the [cls] token, the mean of all tokens, or cls_dist ([cls] and distillation tokens averaged, as AST)",
    )
    ast_stride: int = knob(
        16, "ast only: patch stride in frequency and time (16: non-overlapping; 10: AudioSet-pretrained AST's)"
    )
    attention: str = knob("auto", "attention kernel; auto: split on CPU, flex on CUDA")
    compile: bool = knob(False, "torch.compile the model")
    init: str = knob(
        "",
        "start from these weights: an elasticast checkpoint (elasticast-import-weights writes one) or a file it reads "
        "(paper, vit); the head is kept when the classes match (docs/pretrained.md)",
    )
    # packing and features
    packing: str = knob("first_fit", "first_fit (tight rows) or greedy (the paper's next-fit)")
    max_tokens: int = knob(2048, "tokens per packed row (a 10 s clip at C = 1 is 496 tokens)")
    rows_per_batch: int = knob(2, "packed rows per training step")
    buffer: int = knob(256, "samples the packer considers at once (larger: tighter rows, more memory)")
    scales: tuple[float, ...] = knob(
        (1.0,), "temporal resolutions C drawn per sample (frame shift 10*C ms); 1.0 alone trains at native resolution"
    )
    compression: str = knob("shift", "how C > 1 is made: a longer frame shift, or average-pooling whole C frames")
    max_frames: int = knob(
        3072, "frames a clip may keep (longer clips are cropped, counted as cut); also the position table's length"
    )
    recipe: str = knob(
        "auto", "feature recipe: elasticast, paper (its released models need it), auto: --init's, else elasticast"
    )
    fixed_frames: int = knob(
        0, "the paper's fixed-length mode: clips cropped or padded to int(N / C) frames (0: --init's, else off)"
    )
    frame_shift: float = knob(
        0.0, "frame shift at C = 1 in ms (0: --init's, else 10; the paper's Epic-Sounds recipe: 5)"
    )
    freq_mask: int = knob(0, "SpecAugment: widest masked band in mel bins (0: off)")
    time_mask: int = knob(0, "SpecAugment: widest masked span in frames (0: off)")
    token_dropout: float = knob(
        0.0, "share of each training sample's patches dropped; rows pack the kept ones (paper: 0.1)"
    )
    token_dropout_max: float = knob(0.0, "instead of --token-dropout: a rate per sample drawn from U(0, this)")
    random_cut: int = knob(
        0, "min frames of a random window per sample and epoch, up to min(clip, --max-frames) (0: off; paper Epic: 384)"
    )
    noise: bool = knob(False, "light uniform noise (up to 0.1) and a time roll of -10..9 frames on training fbanks")
    shuffle: bool = knob(True, "shuffle shards and rows every epoch")
    label_type: str = knob("auto", "auto: what the shard set says; single or multi to insist")
    mixup: float = knob(
        0.0,
        "share of training samples mixed with a random partner before the fbank, soft targets (paper, AudioSet: 0.5)",
    )
    mixup_alpha: float = knob(10.0, "mixup: lambda ~ Beta(alpha, alpha)")
    sampling: str = knob(
        "uniform",
        "uniform: every sample once per epoch; balanced: as many draws with replacement by the index's class-balance "
        "weights (paper, AudioSet)",
    )
    # optimisation
    lr: float = knob(0.001, "peak learning rate (AdamW)")
    weight_decay: float = knob(0.05, "AdamW weight decay (not on biases, norms, position tables, [cls])")
    warmup_epochs: float = knob(1.0, "linear warm-up, in epochs (fractions allowed)")
    schedule: str = knob("cosine", "after warm-up: cosine to lr x --min-lr-ratio, the paper's step decay, or constant")
    min_lr_ratio: float = knob(0.01, "cosine: final learning rate as a share of --lr")
    decay_start: int = knob(5, "step schedule: first epoch that decays")
    decay_every: int = knob(1, "step schedule: epochs between decays")
    decay_factor: float = knob(0.85, "step schedule: learning rate multiplied by this at each decay")
    clip_grad: float = knob(1.0, "clip the gradient norm to this (0: off)")
    # resources
    workers: int = knob(1, "Ray Train workers, one DDP rank each")
    device: str = knob("auto", "auto: CUDA when the Ray cluster has GPUs, else CPU")
    cpus_per_worker: float = knob(1.0, "Ray CPUs reserved per training worker")
    threads: int = knob(0, "torch threads per training worker (0: the node's cores / its workers)")
    loader: str = knob("ray", "ray: Ray Data tasks featurize batches; local: the training process does")
    loader_workers: int = knob(1, "concurrent Ray Data tasks per rank (--loader ray)")
    loader_cpus: float = knob(1.0, "Ray CPUs per loader task (fractions allowed)")
    max_failures: int = knob(1, "worker failures Ray Train recovers from, each from the latest checkpoint")
    storage_timeout: float = knob(
        DEFAULT_TIMEOUT_S,
        "seconds an object store may stay unreachable (retried, backoff capped at 20 s) before the run stops with exit 2",
    )
    max_failed: float = knob(
        0.001,
        "holes (samples with bad bytes, left as padding) allowed per epoch, split and rank: a count (>= 1) or a "
        "fraction of the samples (< 1); more stop the run with exit 2",
    )
    featurize: str = knob(
        "loader",
        "where fbanks are made: loader (its workers ship patches) or device (they ship waveforms; the trainer "
        "featurizes on its GPU, for when the loader's CPUs are the limit: docs/stream.md)",
    )
    wandb: str = knob("offline", "wandb mode: offline (default; wandb sync later), online or disabled")
    wandb_project: str = knob("elasticast", "wandb project name")
    wandb_dir: str = knob(
        "",
        "local folder for wandb's files (default: the run folder; for a URL --out: ~/.cache/elasticast/wandb/<scheme>/<bucket>/<prefix> on the node of rank 0)",
    )
    verbose: bool = knob(
        False, "also show Ray's own output (its workers' logs, Ray Train's report lines, Ray Data's progress)"
    )

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        self.scales = tuple(float(c) for c in self.scales)
        self.shards = (self.shards,) if isinstance(self.shards, str) else tuple(self.shards)
        self.weights = tuple(float(w) for w in self.weights)
        if self.weights and len(self.weights) != len(self.shards):
            raise ValueError(f"{len(self.weights)} weights for {len(self.shards)} shard sets {list(self.shards)}")
        positive = (
            "epochs",
            "rows_per_batch",
            "max_tokens",
            "buffer",
            "workers",
            "loader_workers",
            "max_frames",
            "target_frames",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.scales or min(self.scales) < 1.0:
            raise ValueError(f"scales must be C >= 1.0 (1.0 = the base 10 ms frame shift), got {self.scales}")
        if self.lr <= 0 or self.cpus_per_worker <= 0 or self.loader_cpus <= 0:
            raise ValueError("lr, cpus_per_worker and loader_cpus must be > 0")
        if self.frame_shift < 0:
            raise ValueError(f"frame_shift must be > 0 ms (or 0: --init's, else 10), got {self.frame_shift}")
        if not 1 <= self.ast_stride <= 16:
            raise ValueError(f"ast_stride must be in 1..16 (patches may overlap, not skip), got {self.ast_stride}")
        if self.fixed_frames and self.fixed_frames < 16:
            raise ValueError(f"fixed_frames must be 0 (off) or at least one 16-frame patch, got {self.fixed_frames}")
        if self.checkpoint_every < 0 or self.depth < 0:
            raise ValueError(f"checkpoint_every ({self.checkpoint_every}) and depth ({self.depth}) must be >= 0")
        if self.storage_timeout < 0 or self.max_failed < 0:
            raise ValueError(
                f"storage_timeout ({self.storage_timeout}) and max_failed ({self.max_failed}) must be >= 0"
            )
        if not 0 <= self.stop_after <= self.epochs:
            raise ValueError(f"stop_after must be in 0..epochs ({self.epochs}), got {self.stop_after}")
        if self.random_cut and self.fixed_frames:
            raise ValueError(
                "random_cut needs clips at their own length: fixed_frames (the fixed-length mode) has none"
            )
        self.stream()  # the stream's own checks (token dropout, random cuts, ...) fail here, not in a worker

    @property
    def run_epochs(self) -> int:
        """Epochs this invocation runs up to."""
        return self.stop_after or self.epochs

    def splits(self, split: str) -> list[str]:
        """`split` of every shard set (a `PackedStream` of several mixes them)."""
        return [str(Location.of(shards) / split) for shards in self.shards]

    def stream(self, **changes) -> StreamConfig:
        """The training stream's settings (`changes` override them, e.g. for validation)."""
        settings = dict(
            rows_per_batch=self.rows_per_batch,
            max_tokens=self.max_tokens,
            packing=self.packing,
            buffer=self.buffer,
            scales=self.scales,
            compression=self.compression,
            max_frames=self.max_frames,
            shuffle=self.shuffle,
            seed=self.seed,
            freq_mask=self.freq_mask,
            time_mask=self.time_mask,
            token_dropout=self.token_dropout,
            token_dropout_max=self.token_dropout_max,
            random_cut=self.random_cut,
            noise=self.noise,
            backend=self.loader,
            workers=self.loader_workers,
            worker_cpus=self.loader_cpus,
            weights=self.weights or None,
            weight_by=self.weight_by,
            storage_timeout=self.storage_timeout,
            max_failed=self.max_failed,
            featurize=self.featurize,
            mixup=self.mixup,
            mixup_alpha=self.mixup_alpha,
            sampling=self.sampling,
        )
        return StreamConfig(**(settings | changes))

    def valid_stream(self, **changes) -> StreamConfig:
        """The validation streams' settings: the training stream's at C = 1, unshuffled, one source
        each, with no augmentation and every sample once (`StreamConfig.without_augmentation`)."""
        return self.stream(**(dict(scales=(1.0,), shuffle=False, weights=None) | changes)).without_augmentation()

    def changed_on_resume(self, saved: dict) -> list[str]:
        """The settings outside RESUMABLE on which this config differs from `saved` (a run's
        config.yaml), each as `--flag RUN'S (now THIS)`. Keys `saved` lacks or that no longer
        exist (a run from another version) are not compared."""
        now = self.to_dict()

        def shown(value) -> str:
            return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

        changed = []
        for name, before in saved.items():
            if name in RESUMABLE or name not in now:
                continue
            if before != now[name]:
                changed.append(f"--{name.replace('_', '-')} {shown(before)} (now {shown(now[name])})")
        return changed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {name: list(getattr(self, name)) for name in ("scales", "shards", "weights")}


def load_yaml(path: str | Path) -> dict:
    """The overrides in a YAML file; unknown keys are refused by name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ValueError(f"{path}: unknown config keys {unknown}")
    hints = typing.get_type_hints(TrainConfig)
    try:  # YAML reads 1e-3 as a string: coerce scalars to the field's type
        return {k: hints[k](v) if hints[k] in (int, float) else v for k, v in values.items()}
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def parse_args(argv: list[str] | None, description: str = "") -> TrainConfig:
    """Defaults, then `--config FILE`, then the flags given; each flag is a dataclass field."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of config keys (flags given here override it)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag, kind = "--" + f.name.replace("_", "-"), hints[f.name]
        default = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        help_text = f"{f.metadata['help']} (default: {default})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) in (tuple, list):
            parser.add_argument(
                flag, nargs="+", type=typing.get_args(kind)[0], default=None, metavar=f.name.upper(), help=help_text
            )
        else:
            parser.add_argument(flag, type=kind, default=None, choices=CHOICES.get(f.name), help=help_text)
    args = vars(parser.parse_args(argv))
    values = load_yaml(args.pop("config")) if args.get("config") else {}
    values.update({name: value for name, value in args.items() if value is not None})
    try:
        return TrainConfig(**values)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
