"""Distributed merging: the pure message phases in one process, and DDP training on 2 and 3 gloo processes.

The phase tests simulate W ranks by reducing their buffers by hand (sum or
max), exactly what the collective does, and compare the merged state with
NumPy's covariance of all samples. The spawned tests train a small
Conv2d + Linear model under ``DistributedDataParallel`` and compare rank 0's
CSV with a single-process tracker that saw every shard.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from ddp_scenario import (  # noqa: E402
    EPOCHS,
    PLAIN_NAMES,
    STATS,
    STEPS,
    abort_in_teardown,
    abort_in_work,
    checkpoint_first_half,
    checkpoint_second_half,
    ddp_worker,
    nan_batch_job,
    nan_job_batches,
    small_model,
    train,
)
from torch import nn

from delve_fast import distributed as D
from delve_fast.layers import find_layers
from delve_fast.state import CovarianceState
from delve_fast.testing import assert_cov_close, np_mean_cov
from delve_fast.testing_distributed import DistributedRunError, run_on_gloo
from delve_fast.tracker import SaturationTracker


# ------------------------------------------------------------ simulation
def _simulate(per_rank: list[list[CovarianceState | None]], keys: list[str]) -> list[CovarianceState]:
    """Run the message phases of W ranks, reducing each buffer as the collective would."""

    def reduce(buffers: list[torch.Tensor], op: str) -> torch.Tensor:
        stacked = torch.stack(buffers)
        return stacked.amax(0) if op == "max" else stacked.sum(0)

    D.check_header(reduce([D.header_message(keys) for _ in per_rank], "max"), len(keys))
    widths = D.widths_from(reduce([D.width_message(s) for s in per_rank], "max"), keys)
    counts, means = D.moments_from(reduce([D.moment_message(s, widths) for s in per_rank], "sum"), widths)
    centred = reduce([D.centred_message(s, counts, means) for s in per_rank], "sum")
    return D.merged_from(centred, counts, means)


def _state_of(x: np.ndarray) -> CovarianceState:
    state = CovarianceState()
    state.update(torch.from_numpy(x))
    return state


def test_merge_is_exact_for_ranks_with_far_apart_means():
    # Means 1e6 apart with unit spread: a merge of uncentred sums (sum x x^T)
    # would keep about 16 - 12 = 4 digits of the covariance; re-centring
    # keeps the float64 rounding of the data itself.
    gen = np.random.default_rng(0)
    shards = [gen.normal(size=(n, 5)) + 1e6 * r for r, n in enumerate((40, 7, 23))]
    merged = _simulate([[_state_of(x)] for x in shards], ["train-a"])[0]
    mean, cov = np_mean_cov(np.concatenate(shards))
    assert merged.count == 70
    # NumPy's two-pass covariance and ours both carry a few float64 roundings of
    # values ~1e12 (the between-rank term) that cancel to ~1e12 too: 1e-12 of the
    # largest variance leaves room for ~1e4 roundings of eps = 2.2e-16.
    assert_cov_close(merged.covariance(), cov, rtol=1e-12)
    np.testing.assert_allclose(merged.mean.numpy(), mean, rtol=1e-14)
    torch.testing.assert_close(merged.m2, merged.m2.T, rtol=0, atol=0)  # exactly symmetric


def test_ranks_without_data_take_part_and_contribute_nothing():
    gen = np.random.default_rng(1)
    x0, x2 = gen.normal(size=(30, 3)) + 4, gen.normal(size=(12, 3)) - 4
    y1 = gen.normal(size=(9, 6))
    keys = ["train-conv", "train-fc", "eval-conv"]
    per_rank = [
        [_state_of(x0), None, None],
        [None, _state_of(y1), CovarianceState()],  # an empty (reset) state is no data too
        [_state_of(x2), None, None],
    ]
    conv, fc, empty = _simulate(per_rank, keys)
    assert_cov_close(conv.covariance(), np_mean_cov(np.concatenate([x0, x2]))[1], rtol=1e-13)
    assert_cov_close(fc.covariance(), np_mean_cov(y1)[1], rtol=1e-13)
    assert fc.count == 9 and empty.count == 0 and empty.is_empty


def test_different_widths_for_one_layer_fail_on_every_rank():
    per_rank = [[_state_of(np.ones((4, 3)))], [_state_of(np.ones((4, 5)))]]
    with pytest.raises(ValueError, match=r"train-x: the ranks recorded different feature counts \(from 3 to 5\)"):
        _simulate(per_rank, ["train-x"])


def test_different_layer_lists_are_detected_before_any_buffer_of_their_size():
    reduced = torch.stack([D.header_message(["train-a", "eval-a"]), D.header_message(["train-b", "eval-b"])]).amax(0)
    with pytest.raises(RuntimeError, match="the ranks track different layers"):
        D.check_header(reduced, 2)
    D.check_header(torch.stack([D.header_message(["a"])] * 3).amax(0), 1)  # agreement passes


def test_checkpointed_rank_states_merge_like_the_live_ones(tmp_path):
    # A checkpoint holds the rank's own state: restoring every rank's state and
    # merging gives what merging the live states gives (bit for bit: the same
    # ops on the same values).
    gen = np.random.default_rng(2)
    live = [_state_of(gen.normal(size=(20, 4)) * (r + 1) + r) for r in range(3)]
    for r, state in enumerate(live):
        torch.save(state.state_dict(), tmp_path / f"rank{r}.pt")
    restored = []
    for r in range(3):
        state = CovarianceState()
        state.load_state_dict(torch.load(tmp_path / f"rank{r}.pt"))
        restored.append(state)
    a = _simulate([[s] for s in live], ["train-x"])[0]
    b = _simulate([[s] for s in restored], ["train-x"])[0]
    assert a.count == b.count == 60
    assert torch.equal(a.m2, b.m2) and torch.equal(a.mean, b.mean)


def test_canonical_state_puts_a_channels_last_flatten_state_in_chw_order():
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(10, 2, 3, 4, generator=gen, dtype=torch.float64)
    chw = _state_of(y.reshape(10, -1).numpy())
    hwc = _state_of(y.permute(0, 2, 3, 1).reshape(10, -1).numpy())
    out = D.canonical_state(hwc, ("hwc", (2, 3, 4)))
    torch.testing.assert_close(out.m2, chw.m2, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(out.mean, chw.mean, rtol=1e-13, atol=1e-13)
    assert D.canonical_state(chw, ("chw", (2, 3, 4))) is chw and D.canonical_state(None) is None


@pytest.mark.parametrize(
    ("widths", "world"), [([512, 256, 256, 256, 128, 128, 64, 64, 10], 2), ([8, 8, 8], 3), ([5], 4), ([], 2)]
)
def test_eigen_shares_are_balanced_and_deterministic(widths, world):
    owners = D.assign_shares(widths, world)
    assert owners == D.assign_shares(list(widths), world)
    assert all(0 <= o < world for o in owners)
    loads = [sum(c**3 for c, o in zip(widths, owners, strict=True) if o == r) for r in range(world)]
    if widths:
        # Longest-first greedy: no rank carries more than the largest job plus the average.
        assert max(loads) <= max(c**3 for c in widths) + sum(loads) / world
    if len(widths) >= world:
        assert len(set(owners)) == world  # every rank gets work when there is enough


def test_resolve_group_without_an_initialised_process_group():
    assert not torch.distributed.is_initialized()
    assert D.resolve_group(None) is None and D.resolve_group(False) is None
    with pytest.raises(RuntimeError, match="distributed=True needs torch.distributed to be initialised"):
        D.resolve_group(True)
    with pytest.raises(TypeError, match="distributed must be None .automatic., True, False or a"):
        D.resolve_group("gloo")
    assert D.is_main_rank(None)


def test_wrapped_models_keep_the_plain_names():
    model = small_model()
    assert list(find_layers(model)) == PLAIN_NAMES
    assert list(find_layers(nn.DataParallel(model))) == PLAIN_NAMES
    assert list(find_layers(torch.compile(model))) == PLAIN_NAMES  # compile is lazy: nothing is compiled here
    assert list(find_layers([torch.compile(nn.DataParallel(model))])) == PLAIN_NAMES
    outer = nn.Sequential(torch.compile(model))  # a compiled submodule adds no "_orig_mod-" either
    assert list(find_layers(outer)) == [f"0-{n}" for n in PLAIN_NAMES]


def _assert_values_close(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)  # same columns, same order
    for key, want in expected.items():
        got = actual[key]
        if isinstance(want, np.ndarray):
            assert_cov_close(torch.from_numpy(got), want, rtol=1e-9, msg=key)
        elif math.isinf(want):
            assert got == want, key
        else:
            # nan_ok: an average over a mode with no data this epoch is NaN on both sides.
            assert got == pytest.approx(want, rel=1e-9, abs=0, nan_ok=True), key


def _reference(tmp_path: Path, world: int) -> tuple[list[dict], pd.DataFrame]:
    model = small_model()
    savefile = str(tmp_path / "single" / "run")
    with SaturationTracker(
        savefile, save_to=["csv", "npy"], modules=model, stats=STATS, device="cpu", average_sat=True, distributed=False
    ) as tracker:
        values = train(model, tracker, list(range(world)), world)
    return values, pd.read_csv(savefile + ".csv", sep=";", index_col=0)


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_job_reports_the_statistics_of_all_shards(tmp_path, world):
    run_on_gloo(ddp_worker, world, str(tmp_path), timeout_s=150)
    results = [pickle.loads(Path(tmp_path, f"result{r}.pkl").read_bytes()) for r in range(world)]
    expected_values, expected_csv = _reference(tmp_path, world)

    # Names: DDP (and torch.compile around or inside it) adds no prefix.
    for res in results:
        for wrapping, names in res["names"].items():
            assert names == PLAIN_NAMES, wrapping
    assert "compile_ddp" in results[0]["names"] or world != 2

    # Rank 0's CSV is the single-process CSV of all shards. Tolerance 1e-9: the two
    # runs differ only in float64 summation order (per-rank states merged vs one
    # state; DDP's gradient all-reduce vs one backward), errors ~1e-15 that the
    # few SGD steps and the eigen solves of these well-conditioned 3..8-wide
    # covariances (all full rank: more samples than features) amplify by far less than 1e6.
    csv = pd.read_csv(tmp_path / "rank0" / "run.csv", sep=";", index_col=0)
    assert list(csv.columns) == list(expected_csv.columns)
    assert "eval-saturation_0" in csv.columns and "lr" in csv.columns
    assert csv["eval-saturation_0"].isna().tolist() == [False, True]  # epoch 1 had no eval batch anywhere
    np.testing.assert_allclose(csv.to_numpy(float), expected_csv.to_numpy(float), rtol=1e-9, atol=0)
    for epoch in range(EPOCHS):
        _assert_values_close(results[0]["values"][epoch], expected_values[epoch])

    # Every rank returns the very same dict: the same reduced buffers and the same exchanged values.
    for res in results[1:]:
        for mine, rank0 in zip(res["values"], results[0]["values"], strict=True):
            assert list(mine) == list(rank0)
            for key in rank0:
                assert np.array_equal(mine[key], rank0[key], equal_nan=True), key  # NaN: a mode without data

    # The last call (train mode only: widths 4, 8, 3 of 6 (mode, layer) keys) sent the
    # docs/distributed.md formula, whatever the world size: header 32 + widths 16 K
    # + moments 8 sum(1 + C) + centred sums 8 sum(C (C + 1) / 2), then the statistics.
    formula = 32 + 16 * 6 + 8 * (5 + 9 + 4) + 8 * (10 + 36 + 6)
    for res in results:
        exchange = res["exchange"]
        assert exchange.payload_bytes - exchange.by_step["statistics"] == formula
        assert exchange.collectives == 6  # 4 all-reduces, one all_gather_object (sizes, then bytes)

    # Only rank 0 created folders or files.
    saved = np.load(tmp_path / "rank0" / "run" / "_train-covariance-matrix_4" / "_train-covariance-matrix_4_epoch1.npy")
    assert np.array_equal(saved, results[0]["values"][1]["train-covariance-matrix_4"])
    for r in range(1, world):
        assert not (tmp_path / f"rank{r}").exists()


def test_bad_batches_on_some_ranks_give_the_single_process_cells_on_every_rank(tmp_path):
    # A NaN batch on one rank is left out of that rank's shard only; a layer whose batches all held
    # NaN on every rank, or whose merged covariance overflows to Inf, gets NaN cells on every rank,
    # with warnings, and no rank raises (which would leave its peers waiting in a collective).
    run_on_gloo(nan_batch_job, 2, str(tmp_path), timeout_s=150)
    ranks = [pickle.loads(Path(tmp_path, f"nan{r}.pkl").read_bytes()) for r in range(2)]

    # The single-process reference sees both ranks' batches, the bad ones included, and so skips
    # and reports exactly what the job should.
    model = small_model()
    with pytest.warns(RuntimeWarning), SaturationTracker(
        str(tmp_path / "ref" / "run"), save_to=[], modules=model, stats=STATS, device="cpu",
        average_sat=True, distributed=False, nosave=True,
    ) as tracker:  # fmt: skip
        expected = []
        for epoch in range(2):
            per_rank = [nan_job_batches(rank, epoch) for rank in range(2)]
            with torch.no_grad():
                model.train()
                for step in range(STEPS):
                    for train, _ in per_rank:
                        model(train[step])
                model.eval()
                for _, xe in per_rank:
                    model(xe)
            expected.append(tracker.add_saturations())

    for epoch in range(2):
        want = expected[epoch]
        assert any(k.startswith("eval-") for k in want)
        for k, v in want.items():
            scalar = np.ndim(v) == 0
            if k.startswith("eval-") or k == "average-eval-sat":
                assert np.isnan(v).all(), (epoch, k)  # the reference itself: NaN cells, not absent
            elif scalar:
                assert np.isfinite(v), (epoch, k)
        for r, res in enumerate(ranks):
            got = res["values"][epoch]
            assert list(got) == list(want), (r, epoch)
            for k, v in want.items():
                # Tolerance 1e-9 as in the DDP job test above: float64 summation order only.
                np.testing.assert_allclose(got[k], v, rtol=1e-9, atol=0, equal_nan=True, err_msg=f"{r} {k}")

    # Rank 0 names its own skipped batch; every rank explains the NaN cells.
    assert any("(train), rank 0: 1 batch(es) holding NaN" in m for m in ranks[0]["warnings"])
    assert not any("(train), rank 1" in m for m in ranks[1]["warnings"])  # rank 1's training was clean
    assert any("(eval), rank 1: 1 batch(es) holding NaN" in m for m in ranks[1]["warnings"])
    for res in ranks:
        assert any("every recorded batch on every rank held NaN" in m for m in res["warnings"])
        assert any("merged covariance holds NaN or Inf" in m for m in res["warnings"])


def test_ranks_checkpoint_their_own_state_and_a_fresh_pair_resumes_mid_epoch(tmp_path):
    # First pair: the whole job uninterrupted (full/), then the same job stopped mid-epoch 1 with
    # one checkpoint per rank. Second pair (fresh processes): load, finish (resumed/).
    run_on_gloo(checkpoint_first_half, 2, str(tmp_path), timeout_s=150)
    ckpts = [torch.load(tmp_path / f"ckpt_rank{r}.pt", weights_only=False) for r in range(2)]
    # Each checkpoint holds its rank's own, unmerged state: the samples of its shard since the
    # last row (one training step of epoch 1: 8 - r images; the conv layer "0" counts each of
    # its 6 x 6 positions as a row), not the job's.
    rows_per_image = {"0": 36, "3-0": 1, "4": 1}
    for r, ckpt in enumerate(ckpts):
        assert ckpt["tracker"]["epoch"] == 1
        for name in PLAIN_NAMES:
            count = ckpt["tracker"]["recorder"]["states"]["train"][name]["state"]["count"]
            assert count == (8 - r) * rows_per_image[name], (r, name)
    assert ckpt["tracker"]["writer_types"] == []  # rank 1 writes nothing, so it saves no writer state
    assert (tmp_path / "resumed" / "run.csv").exists()  # epoch 0's row, written before the checkpoint

    run_on_gloo(checkpoint_second_half, 2, str(tmp_path), timeout_s=150)
    full = pd.read_csv(tmp_path / "full" / "run.csv", sep=";", index_col=0)
    resumed = pd.read_csv(tmp_path / "resumed" / "run.csv", sep=";", index_col=0)
    assert list(resumed.columns) == list(full.columns) and list(resumed.index) == list(full.index)
    assert len(resumed) == EPOCHS
    # The resumed job ran the same ops on the same data in the same order on each rank (restored
    # weights, optimizer and per-rank states are exact copies), and the merge is deterministic:
    # equal to the uninterrupted job bit for bit.
    np.testing.assert_array_equal(resumed.to_numpy(float), full.to_numpy(float))
    for stem in ("_train-covariance-matrix_4/_train-covariance-matrix_4_epoch1.npy",):
        assert np.array_equal(np.load(tmp_path / "resumed" / "run" / stem), np.load(tmp_path / "full" / "run" / stem))
    # And within 1e-9 of one process over both shards (see test_ddp_job_reports_the_statistics_of_all_shards).
    _, expected_csv = _reference(tmp_path, 2)
    np.testing.assert_allclose(resumed.to_numpy(float), expected_csv.to_numpy(float), rtol=1e-9, atol=0)


def _hang_worker(rank: int, world: int) -> None:
    if rank == 0:  # rank 1 never joins the collective
        SaturationTracker("unused", save_to="csv", modules=nn.Linear(2, 2), device="cpu", nosave=True).add_saturations()


@pytest.mark.slow  # ~20 s: two process start-ups and gloo's 5 s collective timeout
def test_a_rank_that_never_calls_add_saturations_fails_instead_of_hanging():
    with pytest.raises(DistributedRunError, match="rank 0"):
        run_on_gloo(_hang_worker, 2, timeout_s=90, collective_timeout_s=5)


def test_harness_reports_an_abort_in_torchs_teardown_after_the_work_as_a_warning():
    # All collectives done, every peer past the final barrier: the results stand, the crash is named.
    with pytest.warns(RuntimeWarning, match=r"teardown aborted a rank that had finished: rank 1 \(exit code -6\)"):
        run_on_gloo(abort_in_teardown, 2, timeout_s=60, collective_timeout_s=20)


def test_harness_fails_on_an_abort_before_the_work_is_done():
    with pytest.raises(DistributedRunError, match=r"rank 1 \(exit code -6\)"):
        run_on_gloo(abort_in_work, 2, timeout_s=60, collective_timeout_s=10)
