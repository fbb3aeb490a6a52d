"""Models named by MODULE:FUNCTION, their input normalisation, and exit placement that accounts for the network."""

import textwrap

import pytest
import torch
from torch import nn

from mdiexit.models import build_early_exit, create, normalisation, set_normalisation
from mdiexit.models.earlyexit import place_exits
from mdiexit.models.spec import ModelSpecError, build_from_spec, builder_folder, resolve

MODULE = textwrap.dedent('''
    from torch import nn
    from mdiexit.models import build_early_exit

    def blocks(c):
        return [nn.Sequential(nn.Conv2d(c, 4, 3, 2, 1), nn.ReLU()), nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1), nn.ReLU()),
                nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU())]

    def head(n):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n))

    def built(input_shape, num_classes):
        return build_early_exit(blocks(input_shape[0]), input_shape, num_classes, head(num_classes), cut_after=[0],
                                mean=(0.1,), std=(0.2,))

    def pair(input_shape, num_classes):
        return blocks(input_shape[0]), head(num_classes)

    def fixed_head(input_shape, num_classes):
        return blocks(input_shape[0]), head(7)

    def wrong(input_shape, num_classes):
        return 42
''')


@pytest.fixture
def spec_module(tmp_path, monkeypatch):
    (tmp_path / "spec_mod_a.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)  # a module in the current folder resolves, as with `python -m`
    return tmp_path


def test_module_function_builds_a_model(spec_module):
    m = build_from_spec("spec_mod_a:built", (1, 16, 16), 5)
    assert m.num_exits == 2 and m.arch == "spec_mod_a:built"
    assert normalisation(m) == ([0.1], [0.2])  # the builder's own statistics are kept
    logits = m(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))
    assert [tuple(lg.shape) for lg in logits] == [(2, 5), (2, 5)]


def test_blocks_and_head_pair_is_cut_automatically(spec_module):
    m = build_from_spec(f"{spec_module / 'spec_mod_a.py'}:pair", (1, 16, 16), 3)
    assert m.num_exits >= 2 and normalisation(m) is None  # left for `train` to set
    set_normalisation(m, [0.5], [0.25])
    assert normalisation(m) == ([0.5], [0.25])


@pytest.mark.parametrize("spec, message", [
    ("nope", "MODULE:FUNCTION"),
    ("no_such_module_xyz:build", "no module 'no_such_module_xyz'"),
    ("spec_mod_a:missing", "has no function 'missing'"),
    ("spec_mod_a:wrong", "returned int"),
    ("spec_mod_a:fixed_head", "--num-classes 7"),
    ("missing/file.py:build", "not found"),
])
def test_bad_specs_name_the_fix(spec_module, spec, message):
    with pytest.raises(ModelSpecError, match=message):
        build_from_spec(spec, (1, 16, 16), 5) if spec != "nope" else resolve(spec)


def test_create_takes_builtins_and_specs(spec_module):
    assert create("tiny", (1, 28, 28), 10).num_exits == 4
    m = create("spec_mod_a:built", (1, 16, 16), 4, mean=[0.3], std=[0.6])
    assert normalisation(m) == ([0.3], [0.6])  # --mean/--std override the builder's


def test_checkpoint_statistics_load_whatever_the_model_was_built_with():
    a = create("tiny", (3, 28, 28), 10, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    b = create("tiny", (3, 28, 28), 10)  # built with the 1-value default
    b.load_state_dict(a.state_dict())
    assert normalisation(b) == normalisation(a)


def test_exit_placement_avoids_features_larger_than_the_raw_input():
    # per block: (MACs, float32 feature bytes). Near 30 % of the MACs the smallest features (block 2, 300 B)
    # exceed the 200 B raw input; block 4 (36 %) is within the 15 % tolerance and smaller.
    profile = [(10, 800), (10, 400), (10, 300), (2, 900), (4, 150), (64, 100), (0, 100)]
    plain = place_exits(profile, targets=(0.3,), window=0.01)
    assert plain[0]["block"] == 2 and plain[0]["note"] == ""
    aware = place_exits(profile, targets=(0.3,), window=0.01, raw_bytes=200)
    assert aware[0]["block"] == 4 and "moved from block 2" in aware[0]["note"]
    stuck = place_exits(profile, targets=(0.3,), window=0.01, raw_bytes=100, mac_tolerance=0.05)
    assert stuck[0]["block"] == 2 and "saves nothing" in stuck[0]["note"]


def test_build_early_exit_records_its_placement():
    # cumulative MACs 65 %, 76 %, 88 %, 100 %; block 0's 64x16x16 float features are 85x the 768 B raw input,
    # block 1's 8x4x4 (512 B) are smaller and 11 points further: the exit goes there
    blocks = [nn.Conv2d(3, 64, 1), nn.Conv2d(64, 8, 1, 4), nn.Conv2d(8, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1)]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    m = build_early_exit(blocks, (3, 16, 16), 2, head, exit_targets=(0.65,))
    assert [p["block"] for p in m.placement] == [1] and "moved from block 0" in m.placement[0]["note"]
    assert m.placement[0]["feature_bytes"] == 512 < m.placement[0]["raw_bytes"] == 3 * 16 * 16


HELPER = textwrap.dedent('''
    from torch import nn

    def blocks(c):
        return [nn.Sequential(nn.Conv2d(c, 4, 3, 2, 1), nn.ReLU()), nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1), nn.ReLU())]
''')
BUILDER = textwrap.dedent('''
    from torch import nn
    from spec_helper_b import blocks
    from mdiexit.models import build_early_exit

    def build(input_shape, num_classes):
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
        return build_early_exit(blocks(input_shape[0]), input_shape, num_classes, head, cut_after=[0])
''')


def test_a_builder_file_imports_the_modules_beside_it_from_any_folder(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "spec_helper_b.py").write_text(HELPER)
    (tmp_path / "mine" / "spec_builder_b.py").write_text(BUILDER)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr("sys.path", list(__import__("sys").path))  # whatever resolve adds goes with the test
    model = build_from_spec("../mine/spec_builder_b.py:build", (1, 16, 16), 3)
    assert model.num_exits == 2
    assert builder_folder("../mine/spec_builder_b.py:build") == str((tmp_path / "mine").resolve())
    # a checkpoint records that folder: the builder is found there from any other folder
    monkeypatch.chdir(tmp_path)
    assert build_from_spec("../mine/spec_builder_b.py:build", (1, 16, 16), 3, search=[str(tmp_path / "mine")])


def test_a_missing_import_names_the_module_and_the_folder_it_was_looked_for_in(tmp_path, monkeypatch):
    (tmp_path / "spec_builder_c.py").write_text(BUILDER.replace("spec_helper_b", "spec_helper_missing"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSpecError, match=r"imports 'spec_helper_missing', which is neither beside it \(in "
                                             + str(tmp_path)):
        resolve("spec_builder_c.py:build")
    with pytest.raises(ModelSpecError, match="spec_builder_c imports 'spec_helper_missing'"):
        resolve("spec_builder_c:build")
