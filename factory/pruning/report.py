"""A picture of what pruning saw and kept."""

from __future__ import annotations

from pathlib import Path

import torch

from factory.pruning.importance import Aggregation, Importance


def plot_importance(
    imp: Importance, how: Aggregation, dropped: list[int], hidden_kept: int, ffn_kept: int, path: Path
) -> None:
    import matplotlib  # heavy: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # likewise (after the backend is chosen)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), gridspec_kw={"width_ratios": [1, 1.4, 1]})
    bi = imp.block_influence().numpy()
    colors = ["#c44e52" if i in dropped else "#4c72b0" for i in range(len(bi))]
    axes[0].bar(range(len(bi)), bi, color=colors)
    axes[0].set(title="Block influence (1 - cos in/out); red = dropped", xlabel="layer", ylabel="importance")

    ffn = imp.ffn(how)
    # relative to each layer's mean, on a log scale: a few outlier neurons would flatten a linear scale
    rel = ffn / ffn.mean(1, keepdim=True).clamp(min=1e-12)
    ffn_sorted = torch.sort(rel, dim=1, descending=True).values.clamp(min=1e-3)
    im = axes[1].imshow(
        ffn_sorted.numpy(), aspect="auto", cmap="viridis", interpolation="nearest", norm=matplotlib.colors.LogNorm()
    )
    axes[1].axvline(ffn_kept - 0.5, color="w", lw=1.5, ls="--")
    axes[1].set(
        title=f"MLP neuron importance / layer mean (sorted; kept left of line: {ffn_kept})",
        xlabel="neuron rank",
        ylabel="layer",
    )
    fig.colorbar(im, ax=axes[1], fraction=0.03)

    keep_layers = [i for i in range(len(bi)) if i not in dropped]
    hid = torch.sort(imp.hidden(how, keep_layers), descending=True).values.numpy()
    axes[2].plot(hid, color="#55a868")
    axes[2].axvline(hidden_kept - 0.5, color="k", lw=1, ls="--")
    axes[2].set(title=f"Hidden channel importance (sorted; kept: {hidden_kept})", xlabel="channel rank", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
