"""Report plots as PNG (base64), drawn with matplotlib's non-interactive Agg backend."""

from __future__ import annotations

import base64
import io

import numpy as np


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def report_plots(report: dict) -> list[tuple[str, str]]:
    """(title, base64 PNG) for: example lengths against the pack length, pack fill, examples per
    pack, and tokens lost per input file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, L = report["histograms"], report["pack_len"]
    out = []
    fig, ax = plt.subplots(figsize=(6, 3))
    lengths = np.asarray(h["example_length"])
    ax.bar(np.arange(len(lengths)), lengths, width=1.0)
    ax.axvline(L, color="red", linestyle="--", label=f"pack length {L}")
    ax.set_xlabel("example length (tokens, after the over-long policy)")
    ax.set_ylabel("examples")
    ax.legend()
    out.append(("Example lengths", _png(fig)))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3))
    fill = np.asarray(h["pack_fill_percent"])
    ax.bar(np.arange(len(fill)), fill, width=1.0)
    ax.set_xlabel("pack fill (%)")
    ax.set_ylabel("packs")
    out.append(("Pack fill", _png(fig)))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3))
    segs = np.asarray(h["segments_per_pack"])
    ax.bar(np.arange(len(segs)), segs)
    ax.set_xlabel("examples per pack")
    ax.set_ylabel("packs")
    out.append(("Examples per pack", _png(fig)))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3))
    files = report["per_file"]
    names = [f["path"].rsplit("/", 1)[-1] for f in files]
    ax.bar(names, [f.get("lost_tokens", 0) for f in files])
    ax.set_ylabel("tokens lost (truncated or dropped)")
    out.append(("Tokens lost to the over-long policy", _png(fig)))
    plt.close(fig)
    return out
