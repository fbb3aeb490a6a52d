import numpy as np

from mdiexit.calibration import confidence
from mdiexit.exitprofile import outcome
from mdiexit.policies.exit import exit_decisions

LOGITS = np.array([[4.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.0, 0.0, 9.0]], dtype=np.float32)


def test_threshold_rule_labels_and_confidence():
    exits, labels, conf = exit_decisions(LOGITS, 1.0, 0.9, last=False)
    np.testing.assert_allclose(conf, confidence(LOGITS, 1.0))
    assert labels.tolist() == [0, 0, 2]
    assert exits.tolist() == [True, False, True]


def test_last_task_always_exits():
    exits, _, _ = exit_decisions(LOGITS, 1.0, 1.0, last=True)
    assert exits.all()


def test_threshold_one_disables_exit_even_at_full_confidence():
    logits = np.array([[100.0, 0.0]])
    assert confidence(logits)[0] == 1.0
    exits, _, _ = exit_decisions(logits, 1.0, 1.0, last=False)
    assert not exits.any()


def test_temperature_lowers_confidence():
    hot = exit_decisions(LOGITS, 5.0, 0.7, last=False)[0]  # confidences ~0.53, ~0.35, ~0.75
    assert hot.tolist() == [False, False, True]


def test_matches_exitprofile_outcome():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 50, 4)) * 3
    thr = np.array([0.7, 0.0])
    conf = np.stack([confidence(logits[k]) for k in range(2)])
    expect = outcome(conf, thr)
    first = exit_decisions(logits[0], 1.0, 0.7, last=False)[0]
    assert ((expect == 0) == first).all()


def test_single_vector_is_a_batch_of_one():
    exits, labels, conf = exit_decisions(np.array([0.0, 3.0]), 1.0, 0.5, last=False)
    assert exits.shape == labels.shape == conf.shape == (1,)
    assert labels[0] == 1
