"""The Ray-free training parts: config layering, schedules, metrics, one epoch on real batches."""

from __future__ import annotations

import math

import pytest
import torch

from elasticast.metrics import mean_average_precision, score
from elasticast.training.config import TrainConfig, parse_args
from elasticast.training.epoch_report import epoch_metrics, key_counts, progress_line, valid_metrics
from elasticast.training.loop import EpochResult
from elasticast.training.schedule import lr_factor, make_optimizer, make_scheduler, rescale_schedule


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 3e-4\nepochs: 7\nscales: [1.0, 2.5]\npacking: greedy\n")
    config = parse_args(["--config", str(path), "--epochs", "9", "--no-shuffle", "--scales", "1", "4"])
    assert (config.lr, config.epochs, config.scales, config.packing, config.shuffle) == (
        3e-4,
        9,
        (1.0, 4.0),
        "greedy",
        False,
    )
    assert parse_args([]) == TrainConfig()


def test_a_mix_is_flags_or_yaml_and_reaches_the_stream(tmp_path):
    config = parse_args(["--shards", "a", "s3://b/c", "--weights", "0.7", "0.3", "--weight-by", "tokens"])
    assert (config.shards, config.weights) == (("a", "s3://b/c"), (0.7, 0.3))
    assert (config.stream().weights, config.stream().weight_by) == ((0.7, 0.3), "tokens")
    path = tmp_path / "run.yaml"
    path.write_text("shards: data/x\n")
    assert parse_args(["--config", str(path)]).shards == ("data/x",) and TrainConfig().stream().weights is None
    assert TrainConfig(**config.to_dict()) == config  # what config.yaml and the workers receive


@pytest.mark.parametrize(
    "text, message", [("lr: 1\nbogus: 2\n", "unknown config keys \\['bogus'\\]"), ("- 1\n", "expected a mapping")]
)
def test_bad_yaml_is_refused_by_name(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        parse_args(["--config", str(path)])


@pytest.mark.parametrize(
    "flags",
    [
        ["--packing", "best"],
        ["--scales", "0.5"],
        ["--epochs", "0"],
        ["--stop-after", "99"],
        ["--shards", "a", "b", "--weights", "1"],
        ["--weight-by", "bytes"],
        ["--token-dropout", "1"],
        ["--token-dropout", "0.1", "--token-dropout-max", "0.2"],
        ["--random-cut", "8"],
        ["--random-cut", "384", "--fixed-frames", "1024"],
    ],
)
def test_bad_flags_exit_with_a_message(flags, capsys):
    with pytest.raises(SystemExit) as raised:
        parse_args(flags)
    assert raised.value.code == 2 and "error" in capsys.readouterr().err


def test_schedules():
    cosine = TrainConfig(epochs=10, warmup_epochs=1, min_lr_ratio=0.0)
    assert lr_factor(0, 10, cosine) == pytest.approx(0.1) and lr_factor(9, 10, cosine) == 1.0
    assert lr_factor(10 + 45, 10, cosine) == pytest.approx(0.5) and lr_factor(99, 10, cosine) == pytest.approx(
        0, abs=1e-3
    )
    step = TrainConfig(epochs=10, warmup_epochs=0, schedule="step", decay_start=3, decay_every=2, decay_factor=0.5)
    assert [lr_factor(e * 10, 10, step) for e in range(8)] == [1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.125]
    assert lr_factor(50, 10, TrainConfig(warmup_epochs=0, schedule="constant")) == 1.0


def test_a_schedule_moved_to_another_world_keeps_its_place_in_the_epochs():
    """Cosine over 10 epochs, no warm-up: 30 steps of 20 an epoch (1.5 epochs) become 45 of 30."""
    config = TrainConfig(epochs=10, warmup_epochs=0, min_lr_ratio=0.0, lr=1.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    saved = make_scheduler(optimizer, 20, config)  # on the first world, 30 steps in
    saved.last_epoch = 30
    scheduler = make_scheduler(optimizer, 30, config)  # on the new world, restored from the checkpoint
    scheduler.load_state_dict(saved.state_dict())
    rescale_schedule(scheduler, 20, 30)
    expected = 0.5 * (1 + math.cos(math.pi * 1.5 / 10))
    assert scheduler.last_epoch == 45 and optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert scheduler.get_last_lr() == [pytest.approx(expected)]


def test_validation_of_a_mix_is_weighted_by_source_and_kept_per_source():
    scores = {"a": {"metric": 0.5, "accuracy": 0.5}, "b": {"metric": 1.0, "accuracy": 1.0}}
    merged = valid_metrics(scores, {"a": 10, "b": 30}, {"a": 0.8, "b": 0.2})
    assert merged == pytest.approx(
        {
            "metric": 0.6,
            "accuracy": 0.6,
            "samples": 40,
            "metric/a": 0.5,
            "metric/b": 1.0,
            "samples/a": 10,
            "samples/b": 30,
        }
    )
    one = valid_metrics({"a": scores["a"]}, {"a": 10}, {})
    assert one == {"metric": 0.5, "accuracy": 0.5, "samples": 10}


def test_epoch_shares_merge_into_one():
    shares = [
        EpochResult(2, 5, 1.5, 40, 64, 1, 3.0, 0.5, 1, 4, 0, ["a", "b"]),
        EpochResult(1, 2, 0.5, 10, 32, 0, 4.0, 0.2, 0, 2, 1, ["c"]),
    ]
    merged = EpochResult.merged(shares)
    assert (merged.steps, merged.samples, merged.loss_sum, merged.tokens, merged.slots) == (3, 7, 2.0, 50, 96)
    assert (merged.cut_tokens, merged.failed, merged.requests, merged.retries) == (1, 1, 6, 1)
    assert (merged.seconds, merged.data_wait_s, merged.keys) == (4.0, 0.5, ["a", "b", "c"])


def test_no_weight_decay_on_biases_norms_and_position_tables():
    from elasticast.training.loop import build_model

    model = build_model(TrainConfig(), num_classes=3)
    decayed, plain = make_optimizer(model, TrainConfig()).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in plain["params"]} >= {"freq_embed", "time_embed", "head.bias", "norm.weight"}
    assert all(names[id(p)].endswith("weight") and p.ndim == 2 for p in decayed["params"])


def test_metrics():
    logits = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    assert score(logits, torch.tensor([0, 1, 1])) == {"metric": pytest.approx(2 / 3), "accuracy": pytest.approx(2 / 3)}
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert mean_average_precision(logits, targets) == 1.0
    # class 0 ranked [0.9, 0.7, 0.2], positive at rank 2: AP 1/2; class 1 ranked [0.8, 0.3, 0.1],
    # positives at ranks 1 and 3: AP (1 + 2/3) / 2
    targets = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert math.isclose(score(logits, targets)["mAP"], (0.5 + (1 + 2 / 3) / 2) / 2, abs_tol=1e-6)


def test_key_counts_flag_missing_and_duplicated_keys():
    assert key_counts(["a", "b", "c"], 0, ["c", "a", "b"], failed=0)["exactly_once"]
    counts = key_counts(["a", "b", "c"], 3, ["a", "a", "b"], failed=1)
    assert (counts["exactly_once"], counts["duplicates"], counts["missing"], counts["counts"]) == (
        False,
        ["a"],
        ["c"],
        {"a": 2, "b": 1},
    )


def test_epoch_metrics_merge_ranks_and_progress_line():
    ranks = [
        EpochResult(samples=6, loss_sum=3.0, tokens=90, slots=100, cut_tokens=10, seconds=2.0, data_wait_s=0.5),
        EpochResult(samples=4, loss_sum=1.0, tokens=90, slots=100, cut_tokens=0, seconds=3.0, data_wait_s=0.0),
    ]
    metrics = epoch_metrics(1, ranks[0], ranks, {"metric": 0.75, "accuracy": 0.75}, lr=1e-3)
    assert metrics["epoch"] == 2 and metrics["train_loss"] == pytest.approx(0.4)  # per sample over both ranks
    assert (metrics["samples_per_s"], metrics["tokens_per_s"]) == (
        pytest.approx(10 / 3),
        pytest.approx(60.0),
    )  # slowest rank's time
    assert (metrics["pad_ratio"], metrics["cut_ratio"], metrics["data_wait"]) == (
        pytest.approx(0.1),
        pytest.approx(10 / 190),
        0.25,
    )
    line = progress_line(metrics, epochs=4, elapsed=6.0, done=2)
    assert line.startswith("epoch 2/4 | loss 0.4000") and "val accuracy 0.7500" in line and line.endswith("ETA 0.1 min")
