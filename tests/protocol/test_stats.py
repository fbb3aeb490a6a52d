from mdiexit.protocol.stats import LIMIT, SINGLE, calibration_ms, per_task_s, task_stats, tasks_run


def test_task_stats_read_back_by_task_and_batch():
    stats = task_stats({1: 3, 2: 0}, {1: 0.010}, {1: 0.004}, {1: {1: 0.010, 4: 0.016}, 2: {}})
    stats["busy_s"] = 2.5  # other entries share the map
    assert tasks_run(stats) == {1: 3, 2: 0}  # a held task that ran nothing is still held
    assert per_task_s(stats, SINGLE) == {1: 0.010} and per_task_s(stats, LIMIT) == {1: 0.004}
    assert calibration_ms(stats) == {"1": {"1": 10.0, "4": 16.0}}


def test_an_uncalibrated_node_has_no_times():
    stats = task_stats({3: 7}, {}, {})
    assert tasks_run(stats) == {3: 7} and per_task_s(stats, SINGLE) == {} and calibration_ms(stats) == {}
