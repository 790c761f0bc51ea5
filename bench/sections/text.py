"""How figures and tables are written in the report."""
from __future__ import annotations

import math


def fmt(v, digits=1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def verdict(met) -> str:
    return {True: "**met**", False: "**missed**", None: "n/a"}[met]


def spread(values, digits=1) -> str:
    return f"{fmt(values[0], digits)}–{fmt(values[1], digits)}" if values else "–"


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def save_figure(fig, path, title: str) -> tuple[str, str]:
    """Write a figure as PNG and close it; (title, file name) for the report."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return title, path.name
