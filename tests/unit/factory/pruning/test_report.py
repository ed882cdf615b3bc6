"""factory.pruning.report: the importance picture shows what pruning saw and kept
(dropped layers in red, kept-width lines at the kept counts)."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from factory.pruning.importance import Importance
from factory.pruning.report import plot_importance

RED, BLUE = matplotlib.colors.to_rgba("#c44e52"), matplotlib.colors.to_rgba("#4c72b0")


def importance() -> Importance:
    """Three layers, six MLP neurons, two heads, four hidden channels, two samples."""
    L, H = 3, 2
    rows = torch.arange(1, 2 * L + 2, dtype=torch.float64)[:, None]  # norm output r weighs r + 1
    hidden_l2 = rows * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    ffn_l2 = torch.tensor([[1, 6, 2, 5, 3, 4], [6, 5, 4, 3, 2, 1], [2, 2, 2, 2, 2, 2]], dtype=torch.float64)
    return Importance(
        ffn_sum=ffn_l2.clone(),
        ffn_sumsq=ffn_l2**2,
        heads_sum=torch.ones(L, H, dtype=torch.float64),
        heads_sumsq=torch.ones(L, H, dtype=torch.float64),
        hidden_sum=hidden_l2.clone(),
        hidden_sumsq=hidden_l2**2,
        bi_sum=torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64),
        tokens=10,
        samples=2,
    )


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot_importance closes, kept for inspection."""
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig) or close(fig))
    return figures


def test_plot_importance_writes_a_png_of_what_was_kept(tmp_path, drawn):
    path = tmp_path / "importance.png"
    plot_importance(importance(), "l2", dropped=[0], hidden_kept=3, ffn_kept=4, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = drawn
    bi, ffn, hidden = fig.axes[:3]

    bars = bi.patches
    assert [round(b.get_height(), 6) for b in bars] == [0.1, 0.3, 0.2]  # block influence = bi_sum / tokens
    assert [b.get_facecolor() for b in bars] == [RED, BLUE, BLUE]

    image = ffn.images[0].get_array()
    assert image.shape == (3, 6)
    assert np.all(np.diff(image, axis=1) <= 0)  # each layer's neurons sorted, most important first
    np.testing.assert_allclose(image[1], np.array([6, 5, 4, 3, 2, 1]) / 3.5)  # relative to the layer's mean
    np.testing.assert_allclose(image[2], np.ones(6))
    assert ffn.lines[0].get_xdata()[0] == pytest.approx(3.5)  # kept left of the line: 4
    assert "kept left of line: 4" in ffn.get_title()

    curve, kept = hidden.lines
    # norm outputs of the kept layers 1 and 2 (rows 2..5) and the final norm (row 6): (3+4+5+6+7) x [1, 2, 3, 4]
    np.testing.assert_allclose(curve.get_ydata(), [100, 75, 50, 25])
    assert kept.get_xdata()[0] == pytest.approx(2.5)
    assert hidden.get_title() == "Hidden channel importance (sorted; kept: 3)"
    assert hidden.get_yscale() == "log"


def test_plot_importance_with_no_layer_dropped_uses_every_layer(tmp_path, drawn):
    plot_importance(importance(), "mean", dropped=[], hidden_kept=4, ffn_kept=6, path=tmp_path / "i.png")
    (fig,) = drawn
    bi, _, hidden = fig.axes[:3]
    assert [b.get_facecolor() for b in bi.patches] == [BLUE] * 3
    # mean aggregation: sum / samples over rows 0..6 = (1+...+7) / 2 x [1, 2, 3, 4]
    np.testing.assert_allclose(hidden.lines[0].get_ydata(), [56, 42, 28, 14])
