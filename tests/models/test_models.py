import pytest
import torch
from torch import nn

from mdiexit.models import build_early_exit, create
from mdiexit.models.earlyexit import ExitHead, block_profile, choose_boundaries
from mdiexit.models.macs import count_macs

MEAN, STD = (0.3,), (0.35,)


def test_tiny_mac_counts_match_hand_count():
    infos = create("tiny", (1, 28, 28), 10, MEAN, STD).task_info()
    # conv MACs = output elements x (in_channels / groups) x kernel area; linear = in x out
    hand_segments = [8 * 14 * 14 * 1 * 9, 16 * 7 * 7 * 8 * 9, 16 * 7 * 7 * 16 * 9, 32 * 4 * 4 * 16 * 9]
    hand_heads = [16 * 14 * 14 * 8 + 16 * 10, 16 * 7 * 7 * 16 + 16 * 10, 16 * 7 * 7 * 16 + 16 * 10, 32 * 10]
    assert [i.segment_macs for i in infos] == hand_segments
    assert [i.head_macs for i in infos] == hand_heads


def test_depthwise_conv_counted_per_group():
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
    macs, _ = count_macs(conv, torch.zeros(1, 6, 5, 5))
    assert macs == 6 * 5 * 5 * 1 * 9


@pytest.mark.parametrize("arch, shape", [("mobilenetv2", (1, 28, 28)), ("resnet50", (3, 32, 32)),
                                         ("tiny", (1, 28, 28)), ("mobilenetv2", (3, 112, 112))])
def test_tasks_chain_and_shapes(arch, shape):
    model = create(arch, shape, 10, MEAN * shape[0], STD * shape[0]).eval()
    assert model.num_exits == 4
    x = torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
    infos = model.task_info()
    assert infos[0].input_shape == shape
    with torch.no_grad():
        for task, info in zip(model.tasks, infos, strict=True):
            assert tuple(x.shape[1:]) == info.input_shape
            x, logits = task(x)
            assert logits.shape == (3, 10) and tuple(x.shape[1:]) == info.features_shape
    for a, b in zip(infos, infos[1:], strict=False):
        assert a.features_shape == b.input_shape


def test_mobilenet_exits_in_first_two_thirds_after_downsampling():
    infos = create("mobilenetv2", (1, 28, 28), 10, MEAN, STD).task_info()
    total = sum(i.segment_macs for i in infos)
    cum = 0
    for info in infos[:-1]:
        cum += info.segment_macs
        assert cum / total <= 2 / 3 + 0.05
        assert info.features_shape[1] < 28  # never ship a full-resolution feature map
    assert infos[0].feature_bytes < 25 * 1024


def test_choose_boundaries_prefers_small_features():
    # four candidates near 30% of MACs; block 3 has the smallest output
    profile = [(10, 100), (10, 100), (10, 80), (10, 20), (10, 90), (50, 100)]
    assert choose_boundaries(profile, targets=(0.35,), window=0.1) == [3]


def test_bring_your_own_backbone():
    blocks = [nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU()), nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU()),
              nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU()), nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1))]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    model = build_early_exit(blocks, (3, 16, 16), 5, head, cut_after=[0, 2], mean=(0.5,) * 3, std=(0.25,) * 3)
    assert model.num_exits == 3
    assert isinstance(model.tasks[0].head, ExitHead)
    logits = model.eval()(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    assert [tuple(lg.shape) for lg in logits] == [(2, 5)] * 3
    auto = build_early_exit(blocks, (3, 16, 16), 5, head, exit_targets=(0.3,))
    assert auto.num_exits == 2
    with pytest.raises(ValueError, match="cut_after"):
        build_early_exit(blocks, (3, 16, 16), 5, head, cut_after=[3])


def test_block_profile_counts_each_block():
    blocks = [nn.Conv2d(1, 2, 1), nn.Conv2d(2, 4, 1)]
    assert block_profile(blocks, (1, 4, 4)) == [(2 * 16, 4 * 2 * 16), (4 * 2 * 16, 4 * 4 * 16)]


def test_input_norm_folds_scaling_into_task1():
    model = create("tiny", (1, 28, 28), 10, (0.5,), (0.5,)).eval()
    norm = model.tasks[0].segment[0]
    out = norm(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2))
    assert torch.allclose(out.flatten(), torch.tensor([-1.0, 1.0]))


def test_camera_frames_are_brought_down_to_the_small_image_resolution_early():
    small = create("mobilenetv2", (1, 28, 28), 10, MEAN, STD).task_info()
    camera = create("mobilenetv2", (3, 112, 112), 10, MEAN * 3, STD * 3).task_info()
    assert [i.features_shape for i in camera] == [i.features_shape for i in small]
    assert camera[0].feature_bytes < 3 * 112 * 112  # task 1's features are smaller than the raw frame
