"""Report plots as PNG (base64), drawn with matplotlib's non-interactive Agg backend."""

from __future__ import annotations

import base64
import io

import numpy as np


def _bar(title: str, x, heights, xlabel: str | None, ylabel: str, *, width: float = 0.8,
         pack_len: int | None = None) -> tuple[str, str]:
    """(title, base64 PNG) of one bar chart; pack_len draws the pack length as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    try:
        ax.bar(x, heights, width=width)
        if pack_len is not None:
            ax.axvline(pack_len, color="red", linestyle="--", label=f"pack length {pack_len}")
            ax.legend()
        if xlabel:
            ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    finally:
        plt.close(fig)
    return title, base64.b64encode(buf.getvalue()).decode("ascii")


def report_plots(report: dict) -> list[tuple[str, str]]:
    """(title, base64 PNG) for: example lengths against the pack length, pack fill, examples per
    pack, and tokens lost to the over-long policy per input file (at most a few hundred bars each)."""
    h = report["histograms"]
    lengths, fill, segs = (np.asarray(h[k]) for k in ("example_length", "pack_fill_percent", "segments_per_pack"))
    lw, sw = h.get("example_length_bin", 1), h.get("segments_per_pack_bin", 1)
    files = report["per_file"]
    return [
        _bar("Example lengths", np.arange(len(lengths)) * lw, lengths,
             "example length (tokens, after the over-long policy)" + (f", bins of {lw}" if lw > 1 else ""),
             "examples", width=lw, pack_len=report["pack_len"]),
        _bar("Pack fill", np.arange(len(fill)), fill, "pack fill (%)", "packs", width=1.0),
        _bar("Examples per pack", np.arange(len(segs)) * sw, segs,
             "examples per pack" + (f", bins of {sw}" if sw > 1 else ""), "packs", width=0.8 * sw),
        _bar("Tokens lost to the over-long policy", [f.get("label", f["path"]) for f in files],
             [f.get("lost_tokens", 0) for f in files], None, "tokens lost (truncated or dropped)"),
    ]
