"""The figures of one benchmark run, parsed from pytest-benchmark's JSON, and the targets' verdicts.

:class:`Results` holds every figure the report shows and derives the ratios
(speed-ups, fractions of roofline, overheads) from the per-round times;
:mod:`benchmarks.render` turns it into ``docs/benchmarks.md``.
"""

from __future__ import annotations

import statistics

from benchmarks.config import TARGETS
from benchmarks.update_cases import CASES_BY_ID, UPDATE_CASES

PATH_LABELS = {
    "compiled": "compiled",
    "twin": "pure-torch twin",
    "delve": "delve 0.1.50",
    "compiled_mixed": "compiled, mixed",
    "delve_dtrc": "delve 0.1.50 (+dtrc)",
}
VARIANT_LABELS = {
    "fast_cpp": "delve_fast (compiled)",
    "fast_torch": "delve_fast (twin)",
    "fast_mixed": "delve_fast (compiled, mixed)",
    "delve": "delve 0.1.50",
}


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_pct(v: float | None) -> str:
    return "–" if v is None else f"{v:+.1%}"


def fmt_interval(iv: list[float] | None) -> str:
    return "–" if iv is None else f"{iv[0]:+.1%} to {iv[1]:+.1%}"


def fmt_interval_note(training: dict, variant: str) -> str:
    """`` (95% interval a to b)`` for a training variant."""
    return f" (95% interval {fmt_interval(training['overhead_interval_95'][variant])})"


def fmt_ratio(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def fmt_verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


class Results:
    """The parsed figures of one run."""

    def __init__(self, data: dict) -> None:
        self.raw = data
        self.machine = data.get("delve_fast_machine", {})
        self.datetime = data.get("datetime")
        self.update: dict[str, dict[str, float]] = {}
        self.gemm_rate: float | None = None
        self.case_gemm_rate: dict[str, float] = {}
        self.update_times: dict[str, dict[str, list[float]]] = {}
        # First calls of each turn (right after another path ran).
        self.update_first: dict[str, dict[str, float]] = {}
        self.update_first_times: dict[str, dict[str, list[float]]] = {}
        self.steady_calls = 0
        self.control_n: int | None = None
        self.update_gemm_flops: int | None = None
        self.reduction_match: bool | None = None
        self.reduction_err: float | None = None
        self.reduction: dict[str, float] = {}
        self.memory: list[dict] = []
        self.training: dict | None = None
        for b in data.get("benchmarks", []):
            info = b.get("extra_info", {})
            kind = info.get("bench")
            median = b["stats"]["median"]
            if kind == "update":
                meds = dict(info["median_s"])
                gemm = meds.pop("gemm", None)
                meds.pop("control_gemm", None)
                self.control_n = info.get("control_n")
                self.update[info["case"]] = meds
                self.update_times[info["case"]] = info["times_s"]
                self.update_first_times[info["case"]] = info["first_times_s"]
                self.update_first[info["case"]] = dict(info["first_median_s"])
                self.steady_calls = info["steady_calls"]
                self.update_gemm_flops = info["gemm_flops"]
                if gemm:
                    self.case_gemm_rate[info["case"]] = info["gemm_flops"] / gemm
            elif kind == "gemm":
                self.gemm_rate = info["flops"] / median
            elif kind == "reduction":
                self.reduction = dict(info["median_s"])
                self.reduction_match = info.get("stats_match_delve")
                self.reduction_err = info.get("eigvals_max_rel_err")
            elif kind == "memory":
                self.memory.append(info)
            elif kind == "training":
                self.training = info

    # --- derived figures
    def rate(self, case_id: str) -> float | None:
        """The fp64 GEMM rate measured interleaved with this case (else the standalone one)."""
        return self.case_gemm_rate.get(case_id) or self.gemm_rate

    def roofline_s(self, case_id: str) -> float | None:
        rate = self.rate(case_id)
        return CASES_BY_ID[case_id].syrk_flops / rate if rate else None

    def _paired(self, case_id: str, num: str, den: str) -> float | None:
        """Median over rounds of t_num / t_den, both timed in the same round (robust to speed changes)."""
        t = self.update_times.get(case_id, {})
        if num in t and den in t and t[num]:
            return statistics.median(a / b for a, b in zip(t[num], t[den], strict=True))
        return None

    def speedup(self, case_id: str, path: str = "compiled") -> float | None:
        """delve time / ``path`` time, as the median of per-round ratios."""
        return self._paired(case_id, "delve", path)

    def roofline_fraction(self, case_id: str, path: str = "compiled", first: bool = False) -> float | None:
        """Roofline time / ``path`` time, each round's roofline from that round's (steady) GEMM.

        ``first`` compares the path's first call of each turn with the same round's steady GEMM.
        """
        if first:
            t_path = self.update_first_times.get(case_id, {}).get(path)
            t_gemm = self.update_times.get(case_id, {}).get("gemm")
            if not (t_path and t_gemm and self.update_gemm_flops) or len(t_path) != len(t_gemm):
                return None
            ratio = statistics.median(g / p for g, p in zip(t_gemm, t_path, strict=True))
            return ratio * CASES_BY_ID[case_id].syrk_flops / self.update_gemm_flops
        ratio = self._paired(case_id, "gemm", path)  # t_gemm / t_path
        return None if ratio is None else ratio * CASES_BY_ID[case_id].syrk_flops / self.update_gemm_flops

    def _first_call_costs(self, path: str) -> list[float]:
        """first / steady - 1 of ``path``'s median call times, one per conv shape that has both."""
        costs = []
        for c in UPDATE_CASES:
            first = self.update_first.get(c.id, {}).get(path)
            steady = self.update_times.get(c.id, {}).get(path)
            if c.is_conv and first and steady:
                costs.append(first / statistics.median(steady) - 1)
        return costs

    def first_call_cost_text(self) -> str:
        """How much slower the compiled op's (and the control GEMM's) first call was than its steady calls."""
        costs = self._first_call_costs("compiled")
        if not costs:
            return ""
        text = f": in this run that cost the compiled op {min(costs):+.0%} to {max(costs):+.0%} at the conv shapes"
        control = self._first_call_costs("control_gemm")
        if control:
            text += (
                f"; for comparison, MKL's own {self.control_n}² fp64 `torch.mm` (about as long as one update), "
                f"timed the same way in the same rounds, paid {min(control):+.0%} to {max(control):+.0%} on its "
                "first calls"
            )
        return text

    def gemm_rate_range(self) -> tuple[float, float] | None:
        """Lowest and highest per-call fp64 GEMM rate seen during the update benchmarks."""
        if not self.update_gemm_flops:
            return None
        calls = [t for times in self.update_times.values() for t in times.get("gemm", [])]
        if not calls:
            return None
        return self.update_gemm_flops / max(calls), self.update_gemm_flops / min(calls)

    def reduction_speedup(self, path: str = "compiled", base: str = "delve") -> float | None:
        if path in self.reduction and base in self.reduction:
            return self.reduction[base] / self.reduction[path]
        return None

    def memory_extra(self, path: str, input_mib: float = 1024.0) -> float | None:
        for m in self.memory:
            if m["path"] == path and abs(m["input_mib"] - input_mib) < 1:
                return m["extra_mib"]
        return None

    def has_mixed(self) -> bool:
        return any("compiled_mixed" in row for row in self.update.values())

    # --- targets
    def targets(self) -> list[tuple[str, str, bool | None]]:
        t = TARGETS
        out: list[tuple[str, str, bool | None]] = []
        tr = self.training or {}
        ov = tr.get("overhead", {})
        for variant, what, limit, always in (
            ("fast_cpp", "float64 state", t["train_overhead_max"], True),
            ("fast_mixed", "precision='mixed'", t["train_overhead_mixed_max"], False),
        ):
            label = f"training overhead, {what} ≤ {limit:.0%}"
            if variant in ov:
                v = ov[variant]
                out.append((label, f"{v:+.1%}{fmt_interval_note(tr, variant)}", v <= limit))
            elif always:
                out.append((label, "not measured", None))
        s = self.speedup("conv-64x64x32x32")
        out.append(
            (
                f"update op ≥ {t['update_speedup_64x64x32x32_min']:.0f}× faster than delve at (64, 64, 32, 32)",
                fmt_ratio(s),
                None if s is None else s >= t["update_speedup_64x64x32x32_min"],
            )
        )
        speedups = {c.id: self.speedup(c.id) for c in UPDATE_CASES if self.speedup(c.id) is not None}
        if speedups:
            worst = min(speedups, key=speedups.get)
            out.append(
                (
                    "update op never slower than delve at any listed shape",
                    f"slowest: {fmt_ratio(speedups[worst])} at {CASES_BY_ID[worst].label}",
                    speedups[worst] >= t["update_speedup_all_min"],
                )
            )
        else:
            out.append(("update op never slower than delve at any listed shape", "not measured", None))
        for name, first in (
            (
                f"update op ≥ {t['roofline_fraction_conv_min']} of roofline at every conv shape (incl. "
                "channels_last) in steady state",
                False,
            ),
            ("the same, first call after another path (a stricter reading of the target)", True),
        ):
            fracs = {c.id: self.roofline_fraction(c.id, first=first) for c in UPDATE_CASES if c.is_conv}
            fracs = {k: v for k, v in fracs.items() if v is not None}
            if fracs:
                worst = min(fracs, key=fracs.get)
                out.append(
                    (
                        name,
                        f"lowest: {fracs[worst]:.2f} at {CASES_BY_ID[worst].label}",
                        fracs[worst] >= t["roofline_fraction_conv_min"],
                    )
                )
        r = self.reduction_speedup()
        out.append(
            (
                f"reduction ≥ {t['reduction_speedup_min']:.0f}× faster than delve's per-stat eigh loop",
                fmt_ratio(r),
                None if r is None else r >= t["reduction_speedup_min"],
            )
        )
        mem = [m for m in self.memory if m["path"] == "compiled"]
        if mem:
            worst = max(m["extra_mib"] for m in mem)
            out.append(
                (
                    f"compiled op's extra peak ≤ {t['memory_extra_compiled_max_mib']:.0f} MiB whatever the batch",
                    f"{worst:.1f} MiB (largest over {len(mem)} batch sizes)",
                    worst <= t["memory_extra_compiled_max_mib"],
                )
            )
        else:
            out.append(("compiled op's extra peak ≤ 64 MiB whatever the batch", "not measured", None))
        return out
