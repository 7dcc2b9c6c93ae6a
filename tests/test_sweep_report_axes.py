"""results.png: learning rates on a log axis labelled at the swept values, no two labels
overlapping; other numbers on a linear axis unless they span two decades."""
import itertools

import pytest

from tailclip.metrics import MAP_NAMES as GROUPS
from tailclip.tools.sweep_report import figure


def rows_of(key, values):
    return [{"setting": f"{key}={value}", key: value, "seeds": 1,
             **{f"last_{group}_{stat}": 0.5 + index / 100 if stat == "mean" else float("nan")
                for group in GROUPS for stat in ("mean", "std")}} for index, value in enumerate(values)]


def drawn_axis(key, values):
    shown = figure(rows_of(key, values), [key])
    shown.canvas.draw()
    return shown, shown.axes[0]


@pytest.mark.parametrize("values, labels", [
    ([1e-6, 2e-6, 5e-6], ["1e-6", "2e-6", "5e-6"]),
    ([2.5e-7, 5e-7, 1e-6, 1.25e-6, 1.5e-6, 2e-6, 5e-6, 1e-5],
     ["2.5e-7", "5e-7", "1e-6", "1.25e-6", "1.5e-6", "2e-6", "5e-6", "1e-5"]),
])
def test_learning_rates_are_on_a_log_axis_labelled_at_the_swept_values(values, labels):
    import matplotlib.pyplot as plt

    shown, axis = drawn_axis("lr", values)
    assert axis.get_xscale() == "log"
    ticks = [(tick, label) for tick, label in zip(axis.get_xticks(), axis.get_xticklabels())
             if axis.get_xlim()[0] <= tick <= axis.get_xlim()[1]]
    assert [tick for tick, _ in ticks] == pytest.approx(values)
    assert [label.get_text() for _, label in ticks] == labels
    renderer = shown.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for _, label in ticks]
    for first, second in itertools.combinations(boxes, 2):
        assert not first.overlaps(second)
    assert not [label for label in axis.get_xticklabels(minor=True) if label.get_text()]
    plt.close(shown)


def test_other_numbers_stay_linear_unless_they_span_two_decades():
    import matplotlib.pyplot as plt

    shown, axis = drawn_axis("asl_mul", [0.2, 0.4, 1.0, 8.0])
    assert axis.get_xscale() == "linear"
    plt.close(shown)
    shown, axis = drawn_axis("asl_mul", [0.1, 1.0, 10.0])
    assert axis.get_xscale() == "log"
    plt.close(shown)
