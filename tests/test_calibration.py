import numpy as np

from mdiexit.calibration import confidence, expected_calibration_error, fit_temperature, nll
from mdiexit.training.inference import predict_logits
from mdiexit.training.train import load_trained


def test_temperature_repairs_an_overconfident_model(tiny_checkpoint, small_splits):
    model, _, _ = load_trained(tiny_checkpoint)
    val = small_splits[1]
    logits = predict_logits(model, val.images)[-1] * 4.0  # made over-confident on purpose
    t = fit_temperature(logits, val.labels)
    assert t > 1.5
    before = expected_calibration_error(logits, val.labels)
    after = expected_calibration_error(logits, val.labels, t)
    assert after < 0.6 * before
    assert nll(logits, val.labels, t) < nll(logits, val.labels, 1.0)


def test_fit_recovers_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (5000, 10))
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(10, p=row) for row in p])
    t = fit_temperature(true_logits * 3.0, labels)  # calibrated logits scaled by 3 -> T should be ~3
    assert abs(t - 3.0) < 0.3


def test_confidence_is_max_softmax():
    c = confidence(np.array([[0.0, 0.0], [10.0, 0.0]]), temperature=1.0)
    assert np.allclose(c, [0.5, 1 / (1 + np.exp(-10))])
