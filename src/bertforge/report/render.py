"""report.md (a table: tokens, held-out MLM, each task's mean and spread over seeds, marked where it beats the
fresh model beyond the seed spread) and report.png (each figure against tokens, the fresh model dashed)."""

from __future__ import annotations

from pathlib import Path

from bertforge.atomic import atomic_path

BEATS = " ✓"


def report_markdown(report: dict) -> str:
    tasks = report["metrics"]
    lines = [f"# Report card: {report['run']}", "", f"Run folder: `{report['location']}`. Held-out MLM in float32 "
             f"on the run's eval streams; each task's main metric in percent, mean ± standard deviation "
             f"[min-max] over seeds;{BEATS} marks a point whose mean beats the fresh model's by more than the larger "
             f"seed range.", "",
             "| point | tokens | MLM loss | MLM accuracy |" + "".join(f" {n} {m} |" for n, m in tasks.items()),
             "|---|---:|---:|---:|" + "---:|" * len(tasks)]
    for row in report["points"]:
        if "problem" in row:
            lines.append(f"| {row['name']} | {row['tokens']:,} | not scored: {row['problem']} |" + " |" * (
                len(tasks) + 1))
            continue
        mlm = row["mlm"]
        cells = [f"{mlm['loss']:.3f}", f"{100 * mlm['accuracy']:.1f}%"] if mlm else ["-", "-"]
        for name in tasks:
            s = row["summary"][name]
            cells.append(f"{s['mean']:.1f} ± {s['std']:.1f} [{s['min']:.1f}-{s['max']:.1f}]"
                         f"{BEATS if s['beats_fresh'] else ''}")
        lines.append(f"| {row['name']} | {row['tokens']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def draw_report(report: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 (only when a picture is drawn)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (pyplot after the Agg backend is chosen)

    rows = [r for r in report["points"] if "problem" not in r]
    fresh, trained = rows[0], rows[1:]
    panels = [("held-out MLM loss", lambda r: (r["mlm"]["loss"], 0, 0) if r["mlm"] else None)]
    for name, metric in report["metrics"].items():
        panels.append((f"{name}: {metric} (%)", lambda r, n=name: (
            r["summary"][n]["mean"], r["summary"][n]["mean"] - r["summary"][n]["min"],
            r["summary"][n]["max"] - r["summary"][n]["mean"])))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for axis, (title, value) in zip(axes[0], panels, strict=True):
        points = [(r["tokens"] / 1e6, value(r)) for r in trained if value(r) is not None]
        if points:
            axis.errorbar([x for x, _ in points], [v[0] for _, v in points],
                          yerr=[[v[1] for _, v in points], [v[2] for _, v in points]], marker="o", capsize=3,
                          label="pretrained (seed range)")
        if value(fresh) is not None:
            mean, low, high = value(fresh)
            axis.axhline(mean, color="grey", linestyle="--", label="fresh model")
            if low or high:
                axis.axhspan(mean - low, mean + high, color="grey", alpha=0.2)
        axis.set_xlim(left=0)  # the fresh model's place: the dashed line is the point at 0 tokens
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("pretraining tokens (millions)")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.suptitle(f"report card: {report['run']}", fontsize=11)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
