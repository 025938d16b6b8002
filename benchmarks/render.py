"""Render the benchmark run's JSON as ``docs/benchmarks.md`` and ``docs/benchmarks.png``.

Usage: ``python -m benchmarks.render [--json PATH] [--out docs/benchmarks.md]``.
(Not to be confused with :mod:`delve_fast.report`, the tracker's report of a training run.)
Every figure, and every target verdict, is computed from the JSON of the run.
"""

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.config import REPO_ROOT, RESULTS_JSON, TARGETS
from benchmarks.results import (
    PATH_LABELS,
    VARIANT_LABELS,
    Results,
    fmt_interval,
    fmt_ms,
    fmt_pct,
    fmt_ratio,
    fmt_verdict,
)
from benchmarks.update_cases import UPDATE_CASES

# --------------------------------------------------------------------------- markdown


def machine_line(r: Results) -> str:
    m = r.machine
    if not m:
        return "machine: unknown"
    isa = f", delve_fast CPU kernel ISA {m['cpu_kernel_isa']}" if m.get("cpu_kernel_isa") else ""
    load = ""
    if m.get("loadavg_start") is not None:
        load = (
            f"; 1-min load average {m['loadavg_start']:.1f} at start, {m.get('loadavg_end', float('nan')):.1f} at end"
        )
    return (
        f"**Machine:** {m.get('cpu_model')}, {m.get('logical_cpus')} logical CPUs, "
        f"{m.get('torch_threads')} torch threads; torch {m.get('torch_version')} "
        f"(MKL {'yes' if m.get('mkl') else 'no'}), Python {m.get('python')}{isa}{load}."
    )


def load_warning(r: Results) -> list[str]:
    """A warning when other work competed for the CPUs during the run."""
    m = r.machine
    loads = [v for v in (m.get("loadavg_start"), m.get("loadavg_end")) if v is not None]
    cpus = m.get("logical_cpus") or 0
    if not loads or not cpus or max(loads) <= cpus + 1.0:
        return []
    return [
        "",
        f"> **Warning:** the 1-minute load average reached {max(loads):.1f} on {cpus} logical CPUs during this run: "
        "other processes competed for the cores, which inflates and scatters every timing (parallel regions wait "
        "for descheduled threads). The verdicts below are those of a loaded machine; rerun `make bench` on an idle "
        "one before quoting them.",
    ]


def update_table(r: Results) -> list[str]:
    mixed = r.has_mixed()
    head = ["batch (fp32)", "C", "samples K", "compiled ms", "twin ms", "delve ms"]
    if mixed:
        head.append("mixed ms")
    head += ["roofline ms", "compiled vs delve", "twin vs delve"]
    if mixed:
        head.append("mixed vs delve")
    head += ["fraction of roofline", "compiled ms, first call", "fraction of roofline, first call"]
    head += ["fp64 GFLOP/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in UPDATE_CASES:
        row = r.update.get(case.id, {})
        cells = [
            case.label,
            str(case.channels),
            str(case.samples),
            fmt_ms(row.get("compiled")),
            fmt_ms(row.get("twin")),
            fmt_ms(row.get("delve")),
        ]
        if mixed:
            cells.append(fmt_ms(row.get("compiled_mixed")))
        cells += [fmt_ms(r.roofline_s(case.id)), fmt_ratio(r.speedup(case.id)), fmt_ratio(r.speedup(case.id, "twin"))]
        if mixed:
            cells.append(fmt_ratio(r.speedup(case.id, "compiled_mixed")))
        frac = r.roofline_fraction(case.id)
        cells.append("–" if frac is None else f"{frac:.2f}")
        frac_first = r.roofline_fraction(case.id, first=True)
        cells += [
            fmt_ms(r.update_first.get(case.id, {}).get("compiled")),
            "–" if frac_first is None else f"{frac_first:.2f}",
        ]
        rate = r.rate(case.id)
        cells.append("–" if rate is None else f"{rate / 1e9:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def training_section(r: Results) -> list[str]:
    tr = r.training
    if not tr:
        return ["Not measured in this run (no tracker available, or the test was deselected)."]
    med = tr["median_ms"]
    sat = tr.get("add_saturations_ms", {})
    epoch_ms = tr["epoch_steps"] * med["none"]
    lines = [
        f"{tr['rounds']} rounds after warm-up; each round runs one SGD step (batch {tr['batch']}) of every model, "
        "in an order that rotates each round. Medians of the step times; overhead = median with / median without − 1 "
        "(the definition the targets use). The 95% interval is a bootstrap over rounds, each round's "
        "pair of steps resampled together (2000 resamples, fixed seed): how far the overhead could move on a rerun "
        "of the same length. "
        f"`add_saturations()` is timed separately (median of {len(next(iter(sat.values()), []))} calls) and amortised over "
        f"one epoch of {tr['epoch_steps']} steps (CIFAR-10 at batch 64).",
        "",
        "| tracker | median step ms | overhead per step | 95% interval | overhead, median of per-round ratios | "
        "add_saturations() ms | add_saturations() per epoch |",
        "|---|---|---|---|---|---|---|",
        f"| none | {med['none']:.1f} | – | – | – | – | – |",
    ]
    for v in tr["variants"]:
        if v not in med:
            continue
        s = statistics.median(sat[v]) if sat.get(v) else None
        lines.append(
            f"| {VARIANT_LABELS.get(v, v)} | {med[v]:.1f} | {tr['overhead'][v]:+.1%} | "
            f"{fmt_interval(tr['overhead_interval_95'].get(v))} | "
            f"{fmt_pct(tr['overhead_paired'].get(v))} | "
            f"{'–' if s is None else f'{s:.1f}'} | {'–' if s is None else f'{s / epoch_ms:.3%}'} |"
        )
    if tr.get("tracker_note"):
        lines += ["", f"Note: {tr['tracker_note']}"]
    return lines


def reduction_section(r: Results) -> list[str]:
    if not r.reduction:
        return ["Not measured in this run."]
    lines = [
        "Eigenvalues of the 9 tracked layers' covariances (C = 64, 64, 128, 128, 256, 256, 512, 256, 10), "
        "then lsat and idim. delve_fast: one batched `eigvalsh_desc` call; delve 0.1.50: "
        "`compute_saturation` and `compute_intrinsic_dimensionality` per layer, each its own `torch.linalg.eigh`.",
        "",
        "All paths timed in interleaved rounds; medians. "
        + (
            f"lsat and idim from the batched path {'equal' if r.reduction_match else '**differ from**'} delve's on these matrices"
            if r.reduction_match is not None
            else ""
        )
        + (
            f"; largest eigenvalue error of the compiled op against `torch.linalg.eigvalsh`, relative to each "
            f"matrix's largest eigenvalue: {r.reduction_err:.1e}."
            if r.reduction_err is not None
            else "."
        ),
        "",
        "| path | ms | speed-up over delve (lsat+idim) |",
        "|---|---|---|",
    ]
    for p in ("compiled", "twin", "delve", "delve_dtrc"):
        if p in r.reduction:
            lines.append(
                f"| {PATH_LABELS.get(p, p)} | {fmt_ms(r.reduction[p])} | {fmt_ratio(r.reduction_speedup(p))} |"
            )
    return lines


def memory_section(r: Results) -> list[str]:
    if not r.memory:
        return ["Not measured in this run."]
    lines = [
        "One update, each path in a fresh process (`python -m benchmarks.memprobe`): a warm-up update on a small "
        "batch with the same C first (library buffers, thread pools, the state), then the input is allocated; "
        "extra = peak RSS during the update − RSS just before it "
        f"(method: {r.memory[0].get('method')}).",
        "",
        "| path | batch | input MiB | extra peak MiB | extra / input |",
        "|---|---|---|---|---|",
    ]
    for m in sorted(r.memory, key=lambda m: (-m["input_mib"], m["path"])):
        shape = "×".join(map(str, m["shape"]))
        lines.append(
            f"| {PATH_LABELS.get(m['path'], m['path'])} | ({shape}) | {m['input_mib']:.0f} | "
            f"{m['extra_mib']:.1f} | {m['extra_mib'] / m['input_mib']:.2f} |"
        )
    return lines


def render_markdown(r: Results, png_name: str | None) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`pytest benchmarks --benchmark-only`, then `python -m benchmarks.render`) "
        f"from the run of {r.datetime or 'unknown date'}. Do not edit by hand.",
        "",
        machine_line(r),
        "",
        "All comparisons come from the same run. The machine is shared and noisy: read the figures as ratios, "
        "and expect ±10–20 % between runs.",
        *load_warning(r),
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    for name, measured, ok in r.targets():
        lines.append(f"| {name} | {measured} | {fmt_verdict(ok)} |")
    lines += [
        "",
        "## 1. The covariance update op",
        "",
        "Median time of one update of a float64 state. Paths: **compiled** = `delve_fast.ops.cov_update_(..., "
        "backend='cpp')` on the zero-copy `(N, C, S)` view; **twin** = the same op with `backend='torch'`; "
        "**delve** = delve 0.1.50's path, the channelwise permuted reshape plus "
        "`delve.torch_utils.TorchCovarianceMatrix.update` (float64 cast and full matmul); **roofline** = "
        "N·S·C·(C+1) flops at the fp64 GEMM rate (`torch.mm` of two 2048² fp64 matrices). For each shape the "
        "paths and that GEMM are timed in interleaved rounds (order rotated every round), so each row's ratios "
        "and its roofline come from the same stretch of time; the GEMM rate of each row is in the last column"
        + (
            f", and the standalone pytest-benchmark GEMM measured **{r.gemm_rate / 1e9:.1f} GFLOP/s**."
            if r.gemm_rate
            else "."
        ),
        "Fraction of roofline = roofline time / compiled time. Times are medians; speed-ups and fractions of "
        "roofline are medians of per-round ratios (both calls made in the same round), which stay steady when the "
        "shared host changes speed"
        + (
            f" — over this run one 2048² fp64 GEMM ran at {r.gemm_rate_range()[0] / 1e9:.0f}–"
            f"{r.gemm_rate_range()[1] / 1e9:.0f} GFLOP/s."
            if r.gemm_rate_range()
            else "."
        ),
        *(
            [
                f"Each turn of a round times one path's first call, made right after a different path (or the "
                f"GEMM) ran, then {r.steady_calls} more calls of the same path. The main columns are those "
                "steady calls (their mean per turn): the state in which the roofline's GEMM is measured too, since "
                "one 2048³ call amortises its own start. The two *first call* columns show the same op when it "
                "starts from caches, TLB and clocks left by another heavy op (in training, the layer's forward "
                f"conv){r.first_call_cost_text()}; the first-call fraction is still taken against the steady "
                "GEMM."
            ]
            if r.update_first_times
            else []
        ),
        "Tokens are viewed `(B·T, D, 1)` by delve_fast and `(B·T, D)` for delve.",
        "",
        *update_table(r),
        "",
        "## 2. The reduction",
        "",
        *reduction_section(r),
        "",
        "## 3. Training overhead",
        "",
        "VGG-style model (conv 3→64, 64→64, pool, 64→128, 128→128, pool, 128→256, 256→256, pool, 256→512, pool, "
        "Linear 2048→256, 256→10, ReLUs), random 32×32 inputs, batch 64, SGD, stats `lsat` and `idim`, "
        "7 convs + 2 linears tracked, " + f"{r.machine.get('torch_threads', '?')} threads.",
        "",
        *training_section(r),
        "",
        "## 4. Memory",
        "",
        *memory_section(r),
        "",
    ]
    if png_name:
        lines += ["## Chart", "", f"![benchmarks]({png_name})", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- chart


def render_chart(r: Results, png: Path) -> bool:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))

    ax = axes[0][0]
    cases = [c for c in UPDATE_CASES if c.id in r.update]
    series = [("compiled", "compiled"), ("twin", "twin")]
    if r.has_mixed():
        series.append(("compiled_mixed", "compiled, mixed"))
    width = 0.8 / (len(series) + 1)
    xs = range(len(cases))
    for i, (path, label) in enumerate(series):
        vals = [r.speedup(c.id, path) or 0 for c in cases]
        ax.bar([x + i * width for x in xs], vals, width, label=label)
    roof = [(r.update[c.id].get("delve", 0) / r.roofline_s(c.id)) if r.roofline_s(c.id) else 0 for c in cases]
    ax.bar([x + len(series) * width for x in xs], roof, width, label="roofline", color="lightgray", hatch="//")
    ax.set_yscale("log")
    ax.axhline(1, color="k", lw=0.8)
    ax.axhline(TARGETS["update_speedup_64x64x32x32_min"], color="r", ls="--", lw=0.8, label="3× target")
    ax.set_xticks([x + width * len(series) / 2 for x in xs])
    ax.set_xticklabels([c.id for c in cases], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("speed-up over delve 0.1.50 (×, log)")
    ax.set_title("1. update op")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    if r.reduction:
        paths = [p for p in ("compiled", "twin", "delve", "delve_dtrc") if p in r.reduction]
        ax.bar([PATH_LABELS[p] for p in paths], [r.reduction[p] * 1e3 for p in paths], color="tab:green")
        ax.set_ylabel("ms for 9 layers")
        ax.tick_params(axis="x", labelsize=8)
    ax.set_title("2. reduction (lower is better)")

    ax = axes[1][0]
    if r.training:
        ov = r.training["overhead"]
        vs = [v for v in r.training["variants"] if v in ov]
        ax.bar([VARIANT_LABELS.get(v, v) for v in vs], [ov[v] * 100 for v in vs], color="tab:orange")
        ax.axhline(TARGETS["train_overhead_max"] * 100, color="r", ls="--", lw=0.8, label="10% target")
        ax.legend(fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    ax.set_ylabel("training-step overhead (%)")
    ax.set_title("3. training overhead (lower is better)")

    ax = axes[1][1]
    if r.memory:
        mems = sorted(r.memory, key=lambda m: (-m["input_mib"], m["path"]))
        labels = [f"{PATH_LABELS.get(m['path'], m['path'])}\n{m['input_mib']:.0f} MiB in" for m in mems]
        ax.bar(labels, [max(m["extra_mib"], 0.1) for m in mems], color="tab:purple")
        ax.set_yscale("log")
        ax.axhline(TARGETS["memory_extra_compiled_max_mib"], color="r", ls="--", lw=0.8, label="64 MiB bound")
        ax.legend(fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    ax.set_ylabel("extra peak RSS (MiB, log)")
    ax.set_title("4. memory of one update (lower is better)")

    m = r.machine
    fig.suptitle(
        f"delve_fast benchmarks: {m.get('cpu_model', '?')}, {m.get('torch_threads', '?')} threads, torch {m.get('torch_version', '?')}",
        fontsize=11,
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, default=RESULTS_JSON)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    if not args.json.exists():
        raise SystemExit(f"no benchmark results at {args.json}; run `pytest benchmarks --benchmark-only` first")
    r = Results(json.loads(args.json.read_text()))
    png = args.out.with_suffix(".png")
    drew = render_chart(r, png)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_markdown(r, png.name if drew else None))
    print(f"wrote {args.out}" + (f" and {png}" if drew else ""))
    for name, measured, ok in r.targets():
        print(f"  {'MET   ' if ok else 'MISSED' if ok is False else 'n/a   '} {name}: {measured}")


if __name__ == "__main__":
    main()
