"""The trade-off figure names its points and marks the cheapest setting within the budget."""
import matplotlib.pyplot as plt
from matplotlib.text import Text
import pytest

from polyact.plots import latency_figure, plot_tradeoff, tradeoff_figure
from polyact.tradeoff import TradeoffResult, TradeoffRow


def _row(method, degree, alpha, depth, accuracy):
    return TradeoffRow(method, degree, alpha, 0.1, depth, accuracy, 0.0, 0.0, 0.0, 0.0)


# original 98.3%: within 1 pt (>= 97.3) the lowest depth is 4, reached by minimax degree 3 only;
# within 0.5 pt (>= 97.8) it is depth 5, where minimax degree 7 beats degree 5
RESULT = TradeoffResult("toy", 98.3, [
    _row("minimax", 2, None, 3, 90.0),
    _row("minimax", 3, None, 4, 97.5),
    _row("minimax", 5, None, 5, 97.9),
    _row("minimax", 7, None, 5, 98.2),
    _row("chebyshev", 3, None, 4, 96.0),
    _row("composite", None, 6.0, 6, 98.0),
])


def _annotations(fig):
    texts = [t for ax in fig.axes for t in ax.texts]
    return [(t.get_text(), tuple(float(v) for v in t.xy)) for t in texts]


@pytest.fixture
def annotations():
    figures = []

    def draw(max_loss):
        fig = tradeoff_figure(RESULT, max_loss)
        figures.append(fig)
        return _annotations(fig)

    yield draw
    for fig in figures:
        plt.close(fig)


def test_each_point_is_labelled_with_the_degree_or_alpha_that_reached_it(annotations):
    labels = {a for a in annotations(1.0) if not a[0].startswith("cheapest")}
    assert labels == {("d=2", (3.0, 90.0)), ("d=3", (4.0, 97.5)), ("d=7", (5.0, 98.2)),
                      ("d=3", (4.0, 96.0)), ("α=6", (6.0, 98.0))}


@pytest.mark.parametrize("max_loss, text, point", [
    (1.0, "cheapest: minimax d=3, depth 4, 97.50%", (4.0, 97.5)),
    (0.5, "cheapest: minimax d=7, depth 5, 98.20%", (5.0, 98.2)),
])
def test_the_cheapest_setting_within_the_budget_is_marked(annotations, max_loss, text, point):
    marks = [a for a in annotations(max_loss) if a[0].startswith("cheapest")]
    assert marks == [(text, point)]


def test_no_mark_when_nothing_is_within_the_budget(annotations):
    assert not [a for a in annotations(0.05) if a[0].startswith("cheapest")]


def test_plot_tradeoff_writes_a_png(tmp_path):
    path = plot_tradeoff(RESULT, tmp_path / "t.png", 1.0)
    assert path.read_bytes()[:4] == b"\x89PNG"


def _drawn(fig):
    """The figure laid out as _save lays it out, and its renderer."""
    fig.tight_layout()
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _inside(inner, outer) -> bool:
    return (inner.x0 >= outer.x0 - 0.5 and inner.x1 <= outer.x1 + 0.5 and inner.y0 >= outer.y0 - 0.5
            and inner.y1 <= outer.y1 + 0.5)


# what the demo measured (report.json latency_vs_degree): the lowest point sits at the bottom of the axes
LATENCY = [{"degree": 3, "depth": 2, "ct_ct_mults": 1, "N": 16384, "seconds": 0.031},
           {"degree": 7, "depth": 3, "ct_ct_mults": 3, "N": 16384, "seconds": 0.083},
           {"degree": 15, "depth": 4, "ct_ct_mults": 6, "N": 16384, "seconds": 0.195},
           {"degree": 31, "depth": 5, "ct_ct_mults": 9, "N": 16384, "seconds": 0.395}]


def test_latency_labels_lie_inside_the_axes():
    fig = latency_figure(LATENCY)
    renderer = _drawn(fig)
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text().startswith("depth")]
    assert [t.get_text() for t in labels] == ["depth 2", "depth 3", "depth 4", "depth 5"]
    for text in labels:
        assert _inside(text.get_window_extent(renderer), ax.get_window_extent(renderer)), text.get_text()
    plt.close(fig)


@pytest.mark.parametrize("max_loss", [1.0, 0.5])
def test_the_star_covers_no_label(max_loss):
    fig = tradeoff_figure(RESULT, max_loss)
    renderer = _drawn(fig)
    ax = fig.axes[0]
    star = next(line for line in ax.lines if line.get_marker() == "*")
    cx, cy = ax.transData.transform(star.get_xydata()[0])
    radius = star.get_markersize() / 2 * fig.dpi / 72 + star.get_markeredgewidth() * fig.dpi / 72
    for text in ax.texts:
        box = Text.get_window_extent(text, renderer)  # the text alone (an Annotation's own extent adds its arrow)
        assert box.x1 < cx - radius or box.x0 > cx + radius or box.y1 < cy - radius or box.y0 > cy + radius, \
            f"the star at ({cx:.0f}, {cy:.0f}) covers {text.get_text()!r} {box}"
        assert _inside(box, fig.bbox), text.get_text()
    plt.close(fig)
