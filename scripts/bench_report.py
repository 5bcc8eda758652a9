"""The benchmark's pictures (scripts/bench): downtime against memory, and the phases of
each method at each size as stacked bars. Kept in a module of its own so that a picture
that cannot be drawn never costs the measurements: the table and the JSON come first."""

from __future__ import annotations

METHODS = ("direct", "lazy", "share", "registry", "restart", "floor")
LABELS = {"restart": "restart (state lost)", "floor": "floor (raw CRIU + bare copy)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def downtime_plot(rows, path, machine):
    """Downtime a client saw against the pod's memory, one line per method (median, min-max)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for method in METHODS:
        points = [r for r in rows if r["method"] == method and "downtime_s" in r]
        if not points:
            continue
        x = [r["mib"] for r in points]
        y = [r["downtime_s"]["median"] for r in points]
        err = [[v - r["downtime_s"]["min"] for v, r in zip(y, points, strict=True)],
               [r["downtime_s"]["max"] - v for v, r in zip(y, points, strict=True)]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=LABELS.get(method, method))
    ax.set_xlabel("pod memory, MiB")
    ax.set_ylabel("downtime seen by a client, s (median, min-max)")
    ax.set_title(f"Moving the counter to another node ({machine})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def phase_chart(rows, path, machine):
    """One bar per size and method, stacked by its phases (medians, in the order they ran),
    one panel per size (their scales differ by orders of magnitude); the phases of every
    method share one legend. Returns the phases drawn."""
    plt = _pyplot()
    sizes = sorted({r["mib"] for r in rows})
    phases = []
    for r in rows:
        phases += [p for p in r.get("phases", {}) if p not in phases]
    colours = {p: plt.get_cmap("tab20")(i % 20) for i, p in enumerate(phases)}
    fig, axes = plt.subplots(1, len(sizes), figsize=(max(4.5 * len(sizes), 8), 5.5), squeeze=False)
    for ax, mib in zip(axes[0], sizes, strict=True):
        here = [r for r in rows if r["mib"] == mib and r.get("phases")]
        names = [LABELS.get(r["method"], r["method"]).split(" (")[0] for r in here]
        for i, r in enumerate(here):
            bottom = 0.0
            for phase, seconds in r["phases"].items():
                ax.bar(i, seconds, bottom=bottom, color=colours[phase], edgecolor="white", linewidth=0.5)
                bottom += seconds
        ax.set_xticks(range(len(here)), names, rotation=30, ha="right")
        ax.set_title(f"{mib} MiB")
        ax.set_ylabel("seconds (median of the runs)")
        ax.grid(True, axis="y", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[p]) for p in phases]
    fig.legend(handles, phases, loc="center right", title="phase")
    fig.suptitle(f"Where the time goes, phase by phase ({machine})")
    fig.tight_layout(rect=(0, 0, 0.85, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return phases
