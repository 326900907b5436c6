"""``lark-fast eval report``: ACC@k and pass@k per benchmark and label (model or selection method)
from graded samples; a CSV, a markdown table and a bar plot (docs/method.md §10.3)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..measure import write_csv
from ..plotting import pyplot
from ..table import atomic_write
from .samples import GRADED_FIELDS, read_rows


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n, c of them
    correct, is correct: 1 - C(n - c, k) / C(n, k) (the unbiased estimator of pass@k)."""
    if k > n:
        raise ValueError(f"pass@{k}: needs at least {k} samples per problem, got {n}")
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def summarize(rows: list, pass_ks=None) -> list:
    """One dict per (benchmark, label): problems, samples per problem (the smallest), ``acc`` = ACC@k
    (mean over problems of the share of correct samples), its standard error over problems,
    ``pass@k`` for each k in ``pass_ks`` (default 1 and the samples per problem), the share of samples
    without a boxed answer and the share cut at max_new_tokens."""
    groups: dict = {}
    for r in rows:
        g = groups.setdefault((r["benchmark"], r["label"]), {})
        g.setdefault(r["problem_id"], []).append(r)
    out = []
    for (bench, label), problems in groups.items():
        n = np.array([len(v) for v in problems.values()])
        c = np.array([sum(s["correct"] for s in v) for v in problems.values()])
        k_min = int(n.min())
        ks = sorted({1, k_min} if pass_ks is None else set(pass_ks))
        acc = c / n
        samples = [s for v in problems.values() for s in v]
        row = {"benchmark": bench, "label": label, "problems": len(problems), "samples_per_problem": k_min,
               "acc": float(acc.mean()),
               "acc_stderr": float(acc.std(ddof=1) / math.sqrt(len(acc))) if len(acc) > 1 else float("nan")}
        for k in ks:
            row[f"pass@{k}"] = float(np.mean([pass_at_k(int(a), int(b), k) for a, b in zip(n, c)]))
        row["no_boxed_answer"] = float(np.mean([s.get("extracted") is None for s in samples]))
        row["cut_at_max_new_tokens"] = float(np.mean([s.get("finish_reason") == "length" for s in samples]))
        out.append(row)
    return out


def write_report(graded: list, output_dir, *, pass_ks=None) -> list:
    """Reads graded sample files, writes ``report.csv``, ``report.md`` and ``report.png`` (with
    matplotlib) into ``output_dir``; returns the rows."""
    rows = [r for path in graded for r in read_rows(path, GRADED_FIELDS)]
    table = summarize(rows, pass_ks)
    out = Path(output_dir)
    write_csv(out / "report.csv", [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
                                   for r in table])
    with atomic_write(out / "report.md", encoding="utf-8") as f:
        f.write(markdown(table))
    plot(table, out / "report.png")
    return table


def markdown(table: list) -> str:
    metrics = [k for k in table[0] if k.startswith("pass@")]
    lines = ["| benchmark | label | problems | k | ACC@k (± s.e.) | " + " | ".join(metrics) + " | no boxed answer |",
             "|---" * (6 + len(metrics)) + "|"]
    for r in table:
        lines.append(f"| {r['benchmark']} | {r['label']} | {r['problems']} | {r['samples_per_problem']} | "
                     f"{100 * r['acc']:.1f}% ± {100 * r['acc_stderr']:.1f} | "
                     + " | ".join(f"{100 * r[m]:.1f}%" for m in metrics) + f" | {100 * r['no_boxed_answer']:.0f}% |")
    return "\n".join(lines) + "\n"


def plot(table: list, path: Path) -> None:
    plt = pyplot(str(path))
    if plt is None:
        return
    benches = list(dict.fromkeys(r["benchmark"] for r in table))
    labels = list(dict.fromkeys(r["label"] for r in table))
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(benches) * len(labels)), 3.6))
    for j, label in enumerate(labels):
        rows = {r["benchmark"]: r for r in table if r["label"] == label}
        xs = [i + (j - (len(labels) - 1) / 2) * width for i, b in enumerate(benches) if b in rows]
        ys = [100 * rows[b]["acc"] for b in benches if b in rows]
        err = [100 * np.nan_to_num(rows[b]["acc_stderr"]) for b in benches if b in rows]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=label)
    ax.set_xticks(range(len(benches)), benches)
    ax.set_ylabel(f"ACC@{table[0]['samples_per_problem']} (%)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
