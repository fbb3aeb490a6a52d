"""Bring your own model: a model object, exits trained without labels (teacher), input statistics, memory-bounded
inference batches."""

import json

import numpy as np
import pytest
import torch

from mdiexit.calibration import confidence
from mdiexit.data import Dataset
from mdiexit.export import export_package
from mdiexit.models import create, normalisation
from mdiexit.training.inference import memory_batch, predict_logits
from mdiexit.training.train import TrainConfig, TrainError, load_trained, train

pytestmark = pytest.mark.training


def _untrained_exits(checkpoint):
    """The trained tiny model's backbone and final head, with fresh (untrained) exit heads."""
    trained, cfg, _ = load_trained(checkpoint)
    torch.manual_seed(5)
    model = create("tiny", (1, 28, 28), 10)
    keep = {k: v for k, v in trained.state_dict().items() if ".segment." in k or k.startswith("tasks.3.")}
    model.load_state_dict(keep, strict=False)
    return model, cfg


def _agreement(model, images):
    logits = predict_logits(model, images)
    return (logits.argmax(2) == logits[-1].argmax(1)[None]).mean(1)


def test_teacher_targets_train_untrained_exits_without_labels(tiny_checkpoint, small_splits, tmp_path):
    tr, val = small_splits
    unlabelled = [Dataset(d.images, np.full(len(d), -1), d.classes) for d in (tr.subset(np.arange(1500)), val)]
    model, base = _untrained_exits(tiny_checkpoint)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = _agreement(model, val.images)
    cfg = TrainConfig(model="tiny", mode="exits-only", exit_targets="teacher", epochs=4, batch_size=64, lr=0.2,
                      threads=1, seed=1, mean=base.mean, std=base.std)
    train(cfg, *unlabelled, tmp_path, model=model)
    after = _agreement(model, val.images)
    assert after[-1] == 1.0 and all(after[:3] > 0.5) and all(after[:3] > before[:3] + 0.3), (before, after)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before_state[k])}
    assert changed and all(".head." in k and not k.startswith("tasks.3.") for k in changed)
    assert "agreement with the final exit" in (tmp_path / "train.log").read_text()
    with pytest.raises(TrainError, match="passed to train"):
        load_trained(tmp_path / "model.pt")  # trained as an object: the object is needed again
    fresh, _ = _untrained_exits(tiny_checkpoint)
    loaded, cfg2, _ = load_trained(tmp_path / "model.pt", model=fresh)
    assert cfg2.exit_targets == "teacher"
    assert np.allclose(predict_logits(loaded, val.images[:64]), predict_logits(model, val.images[:64]), atol=1e-5)
    # calibration: the exits against the teacher; the final exit cannot be calibrated against its own predictions
    no_labels = export_package(tmp_path / "model.pt", tmp_path / "pkg", splits_val=unlabelled[1], model=fresh)
    m = json.loads((no_labels / "manifest.json").read_text())
    assert m["final_exit_calibration"] == "none" and m["tasks"][-1]["temperature"] == 1.0
    assert all(0.05 * 1.01 < t["temperature"] < 20 for t in m["tasks"][:-1])
    labelled = export_package(tmp_path / "model.pt", tmp_path / "pkg2", splits_val=val, model=fresh)
    m2 = json.loads((labelled / "manifest.json").read_text())
    assert m2["final_exit_calibration"] == "labels" and m2["profile_targets"] == "teacher"
    assert 0.05 * 1.01 < m2["tasks"][-1]["temperature"] != 1.0
    confident = confidence(predict_logits(model, val.images)[-1], m2["tasks"][-1]["temperature"])
    assert np.median(confident) < 0.999  # at the lower bound every confidence would be about 1


def test_settings_that_cannot_work_are_refused(small_splits, tmp_path):
    tr, val = small_splits
    with pytest.raises(TrainError, match="--freeze-backbone"):
        train(TrainConfig(model="tiny", exit_targets="teacher", epochs=1), tr, val, tmp_path / "a")
    unlabelled = Dataset(tr.images[:64], np.full(64, -1), tr.classes)
    with pytest.raises(TrainError, match="--exit-targets teacher"):
        train(TrainConfig(model="tiny", epochs=1), unlabelled, val, tmp_path / "b")
    with pytest.raises(TrainError, match="--num-classes 3 is less than"):
        train(TrainConfig(model="tiny", epochs=1, num_classes=3), tr, val, tmp_path / "c")


def test_statistics_from_the_data_replacing_a_pretrained_models_are_a_warning(tiny_checkpoint, small_splits,
                                                                             tmp_path, capsys):
    tr, val = small_splits
    tr = tr.subset(np.arange(128))
    kw = dict(model="tiny", mode="exits-only", epochs=1, threads=1, init_from=str(tiny_checkpoint))
    train(TrainConfig(**kw), tr, val, tmp_path / "inherit")  # the init checkpoint's own statistics: no warning
    assert "warning: input mean" not in capsys.readouterr().err
    inherited = load_trained(tmp_path / "inherit" / "model.pt")[1].mean
    assert inherited == pytest.approx(load_trained(tiny_checkpoint)[1].mean)
    model, _ = _untrained_exits(tiny_checkpoint)
    model.tasks[0].segment[0].explicit = False  # a backbone whose statistics nobody stated
    train(TrainConfig(**{**kw, "init_from": None}), tr, val, tmp_path / "computed", model=model)
    err = capsys.readouterr().err
    assert "warning: input mean" in err and "--mean/--std" in err
    given = TrainConfig(**{**kw, "mean": [0.25], "std": [0.5]})
    m = train(given, tr, val, tmp_path / "given")
    assert normalisation(m) == ([0.25], [0.5])


def test_inference_batches_stay_within_the_memory_budget():
    model = create("mobilenetv2", (3, 224, 224), 1000)
    batch = memory_batch(model, budget_bytes=1 << 30)
    # the largest activation at 224x224 is the stem's output, 32 channels at 112x112 float32 (1.6 MB an item)
    assert batch == (1 << 30) // (3 * 32 * 112 * 112 * 4)
    assert memory_batch(create("tiny", (1, 28, 28), 10)) == 512  # small models keep the cap


def test_small_datasets_get_smaller_batches_or_a_warning_naming_the_fix(small_splits, tmp_path, capsys):
    tr, val = small_splits
    three_hundred = tr.subset(np.arange(300))
    cfg = TrainConfig(model="tiny", epochs=1, threads=1)  # the default batch
    train(cfg, three_hundred, val.subset(np.arange(100)), tmp_path / "auto")
    assert np.ceil(300 / cfg.batch_size) >= 20, cfg.batch_size
    err = capsys.readouterr().err
    assert f"batches of {cfg.batch_size}" in err and "validation accuracy per exit: e1" in err
    train(TrainConfig(model="tiny", epochs=1, threads=1, batch_size=128), three_hundred, val.subset(np.arange(100)),
          tmp_path / "asked")
    err = capsys.readouterr().err
    assert "3 optimizer steps an epoch" in err and "--batch-size 15" in err
    assert "near chance" in err  # one epoch of three steps teaches the exits nothing
