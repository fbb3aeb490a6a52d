import numpy as np
import pytest
import torch

from mdiexit.training.train import TrainConfig, TrainError, augment_batch, exit_weights, load_trained, train

pytestmark = pytest.mark.training


def tiny_cfg(**kw):
    return TrainConfig(**{"model": "tiny", "epochs": 2, "batch_size": 128, "lr": 0.05, "threads": 1, "seed": 3, **kw})


def state(path):
    return load_trained(path)[0].state_dict()


def test_resume_continues_exactly(small_splits, tmp_path):
    tr, val = small_splits
    tr = tr.subset(np.arange(1024))
    train(tiny_cfg(), tr, val, tmp_path / "straight")
    train(tiny_cfg(), tr, val, tmp_path / "resumed", stop_after=1)  # interrupted after one epoch
    assert not (tmp_path / "resumed" / "model.pt").exists()
    with pytest.raises(ValueError, match="another config"):
        train(tiny_cfg(lr=0.5), tr, val, tmp_path / "resumed")
    train(tiny_cfg(), tr, val, tmp_path / "resumed")
    a, b = state(tmp_path / "straight" / "model.pt"), state(tmp_path / "resumed" / "model.pt")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert "resumed from" in log and "epoch 2/2" in log


def test_exits_only_keeps_backbone_frozen(tiny_checkpoint, small_splits, tmp_path):
    tr, val = small_splits
    before = state(tiny_checkpoint)
    cfg = TrainConfig(**{**load_trained(tiny_checkpoint)[1].__dict__, "mode": "exits-only", "epochs": 1,
                         "init_from": str(tiny_checkpoint), "threads": 1})
    train(cfg, tr.subset(np.arange(512)), val, tmp_path)
    after = state(tmp_path / "model.pt")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".head." in k for k in changed)
    assert not any(k.startswith("tasks.3.") for k in changed)  # the final classifier belongs to the backbone


def test_early_exit_weights_ramp_up():
    cfg = TrainConfig(exit_weight=0.8, ramp_fraction=0.5)
    assert exit_weights(cfg, 0.0, 4) == pytest.approx([0.08, 0.08, 0.08, 1.0])
    assert exit_weights(cfg, 0.5, 4) == pytest.approx([0.8, 0.8, 0.8, 1.0])
    assert exit_weights(cfg, 0.9, 4) == pytest.approx([0.8, 0.8, 0.8, 1.0])


def test_augment_keeps_shape_dtype_and_content():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=1)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert set(out[0].unique().tolist()) <= set(x[0].unique().tolist()) | {0}


def test_device_names_are_checked_before_any_work(small_splits, tmp_path):
    tr, val = small_splits
    with pytest.raises(TrainError, match="use cpu or cuda"):
        train(tiny_cfg(), tr, val, tmp_path / "tpu", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="--device cpu"):
            train(tiny_cfg(), tr, val, tmp_path / "gpu", device="cuda")
    assert not (tmp_path / "tpu").exists() and not (tmp_path / "gpu").exists()
