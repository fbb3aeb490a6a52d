import numpy as np

from mdiexit.calibration import confidence
from mdiexit.exitprofile import outcome
from mdiexit.policies.exit import exit_decision, exit_decisions

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


def test_one_item_decides_as_the_batch_rule_does():
    """The runtime's per-item rule agrees with the batch rule: same exits, labels and confidences, at every
    temperature and threshold, and at the last task."""
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(2000, 10)) * rng.uniform(0.1, 8, size=(2000, 1))).astype(np.float32)
    for temperature, threshold, last in ((1.3, 0.8, False), (0.7, 1.0, False), (2.0, 0.5, True), (1.0, 0.0, False)):
        exits, labels, conf = exit_decisions(logits, temperature, threshold, last)
        one = [exit_decision(row, temperature, threshold, last) for row in logits]
        assert [e for e, _, _ in one] == exits.tolist()
        assert [label for _, label, _ in one] == labels.tolist()
        np.testing.assert_allclose([c for _, _, c in one], conf, rtol=1e-12)
    assert exit_decision(np.array([100.0, 0.0]), 1.0, 1.0, last=False)[0] is False  # 1.0 disables the exit
