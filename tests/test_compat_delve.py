"""Every public name of delve 0.1.50 exists at the same import path under delve_fast.

The test walks delve's own modules (installed by the test extra), so a name
delve defines and delve_fast lacks fails here by name. Signatures are
compared parameter by parameter: delve's parameters, in delve's order and of
the same kind, with a default wherever delve has one (the same default where
it is a plain value); delve_fast may add parameters after them, each with a
default or keyword-only. Values are checked against delve's own metric
functions and against NumPy float64.
"""

from __future__ import annotations

import importlib
import inspect
import math
import warnings

import numpy as np
import pytest
import torch

delve = pytest.importorskip("delve", reason="delve==0.1.50 is not installed (pip install delve_fast[delve])")
if getattr(delve, "__version__", None) != "0.1.50":  # pragma: no cover - environment check
    pytest.skip(f"compatibility is defined against delve 0.1.50, found {delve.__version__}", allow_module_level=True)

MODULES = (
    "delve",
    "delve.torchcallback",
    "delve.torch_utils",
    "delve.metrics",
    "delve.writers",
    "delve.pca_layers",
    "delve.tools",
    "delve.logger",
)
PLAIN = (int, float, str, bool, type(None), tuple, list)


def _public_names(module_name: str) -> list[tuple[str, object]]:
    """Names delve exposes in ``module_name``: not private, and defined by delve (re-imports included)."""
    module = importlib.import_module(module_name)
    out = []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or inspect.ismodule(obj):
            continue
        if (getattr(obj, "__module__", None) or "").startswith("delve"):
            out.append((name, obj))
    return out


CASES = [(m, n) for m in MODULES for n, _ in _public_names(m)]


def _ours(module_name: str, name: str) -> object:
    module = importlib.import_module(module_name.replace("delve", "delve_fast", 1))
    assert hasattr(module, name), f"{module.__name__}.{name} is missing (delve has {module_name}.{name})"
    return getattr(module, name)


def _signature(obj: object) -> inspect.Signature:
    return inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)


def _same_default(ours: object, theirs: object) -> bool:
    """Equal defaults; a tuple stands in for delve's (mutable) list default."""
    if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)):
        return list(ours) == list(theirs)
    return type(ours) is type(theirs) and ours == theirs or (isinstance(ours, str) and ours == theirs)


def _check_compatible(theirs: inspect.Signature, ours: inspect.Signature, where: str) -> None:
    t = [p for p in theirs.parameters.values() if p.name != "self"]
    o = [p for p in ours.parameters.values() if p.name != "self"]
    their_var_kw = any(p.kind is p.VAR_KEYWORD for p in t)
    t_named = [p for p in t if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    o_named = [p for p in o if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    assert [p.name for p in o_named[: len(t_named)]] == [p.name for p in t_named], (
        f"{where}: parameters {[p.name for p in o_named]} do not start with delve's {[p.name for p in t_named]}"
    )
    for tp, op in zip(t_named, o_named, strict=False):
        assert op.kind == tp.kind, f"{where}: {tp.name} is {op.kind.description}, delve's is {tp.kind.description}"
        if tp.default is not tp.empty:
            assert op.default is not op.empty, f"{where}: {tp.name} has no default; delve's is {tp.default!r}"
            if isinstance(tp.default, PLAIN):
                assert _same_default(op.default, tp.default), (
                    f"{where}: {tp.name} defaults to {op.default!r}, delve's to {tp.default!r}"
                )
    for extra in o_named[len(t_named) :]:
        assert extra.default is not extra.empty or extra.kind is extra.KEYWORD_ONLY, (
            f"{where}: added parameter {extra.name} needs a default"
        )
        assert extra.default is not extra.empty, f"{where}: added keyword {extra.name} needs a default"
    if their_var_kw:
        assert any(p.kind is p.VAR_KEYWORD for p in o), f"{where}: delve accepts **kwargs, delve_fast does not"


def test_the_walk_finds_delves_names():
    # A walk that found nothing would pass every check below vacuously.
    names = {(m, n) for m, n in CASES}
    assert ("delve.torchcallback", "SaturationTracker") in names
    assert ("delve.writers", "plot_stat") in names
    assert ("delve", "csv") in names
    assert len(CASES) > 40


@pytest.mark.parametrize(("module_name", "name"), CASES, ids=[f"{m}.{n}" for m, n in CASES])
def test_public_name_exists_with_compatible_signature(module_name, name):
    theirs = getattr(importlib.import_module(module_name), name)
    ours = _ours(module_name, name)
    where = f"{module_name}.{name}"
    if inspect.isclass(theirs):
        assert inspect.isclass(ours), f"{where} is a class in delve, not in delve_fast"
    if callable(theirs):
        _check_compatible(_signature(theirs), _signature(ours), where)


def _public_methods(cls: type) -> dict[str, object]:
    return {
        k: v
        for k, v in vars(cls).items()
        if not k.startswith("_") and inspect.isfunction(v) and (v.__module__ or "").startswith("delve")
    }


CLASS_CASES = sorted(
    {(obj.__module__, obj.__name__): obj for m in MODULES for _, obj in _public_names(m) if inspect.isclass(obj)}
)


#: Methods whose delve signature is not the one to follow, and why.
METHOD_EXCEPTIONS = {
    # delve's abstract method lists global_step as a required positional
    # parameter, but none of delve's writers accepts it positionally (they all
    # take (prefix, value_dict, **kwargs)) and both trackers pass it by keyword.
    # delve_fast's abstract method matches the writers.
    ("AbstractWriter", "add_scalars"),
}


@pytest.mark.parametrize(("module_name", "cls_name"), CLASS_CASES, ids=[f"{m}.{n}" for m, n in CLASS_CASES])
def test_public_methods_exist_with_compatible_signatures(module_name, cls_name):
    theirs = getattr(importlib.import_module(module_name), cls_name)
    ours = _ours(module_name, cls_name)
    for meth, fn in _public_methods(theirs).items():
        if (cls_name, meth) in METHOD_EXCEPTIONS:
            continue
        assert hasattr(ours, meth), f"{module_name}.{cls_name}.{meth} is missing in delve_fast"
        _check_compatible(inspect.signature(fn), inspect.signature(getattr(ours, meth)), f"{cls_name}.{meth}")


def test_compatibility_check_rejects_a_reordered_signature():
    def theirs(a, b=1, **kwargs): ...

    def reordered(b=1, a=None, **kwargs): ...

    def no_kwargs(a, b=1): ...

    def other_default(a, b=2, **kwargs): ...

    def added(a, b=1, c=0, *, d=False, **kwargs): ...

    for bad in (reordered, no_kwargs, other_default):
        with pytest.raises(AssertionError):
            _check_compatible(inspect.signature(theirs), inspect.signature(bad), bad.__name__)
    _check_compatible(inspect.signature(theirs), inspect.signature(added), "added")


def test_top_level_shortcuts_and_submodules():
    import delve_fast
    from delve_fast.writers import CSVWriter, NPYWriter, PrintWriter, TensorBoardWriter

    assert (delve_fast.csv, delve_fast.npy, delve_fast.console, delve_fast.tensorboard) == (
        CSVWriter,
        NPYWriter,
        PrintWriter,
        TensorBoardWriter,
    )
    assert delve_fast.metrics.compute_saturation is delve_fast.stats.compute_saturation
    assert delve_fast.torchcallback.SaturationTracker is delve_fast.SaturationTracker
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        delve_fast.nonexistent  # noqa: B018


def _random_cov(seed: int, c: int = 6, rank: int | None = None) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, rank or c)) @ rng.normal(size=(rank or c, c)) * rng.uniform(0.5, 3.0, size=c)
    return torch.from_numpy(np.cov(x, rowvar=False, bias=True))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("thresh", [0.5, 0.9, 0.99])
def test_metric_functions_agree_with_delve(seed, thresh):
    from delve import metrics as theirs

    from delve_fast import metrics as ours

    cov = _random_cov(seed, rank=4 if seed % 2 else None)
    # idim and lsat are counts of eigenvalue shares below thresh: exact, unless a share ties thresh.
    assert ours.compute_intrinsic_dimensionality(cov, thresh) == theirs.compute_intrinsic_dimensionality(
        cov.clone(), thresh
    )
    assert ours.compute_saturation(cov, thresh) == theirs.compute_saturation(cov.clone(), thresh)
    # trace: the same sum of C float64 numbers, up to summation order (C * eps relative).
    assert ours.compute_cov_trace(cov) == pytest.approx(float(theirs.compute_cov_trace(cov.clone())), rel=1e-14)
    # eigenvalue sum: two eigensolvers agree to ~C * eps * ||cov|| each; 1e-12 relative is far above that.
    assert ours.compute_diag_trace(cov) == pytest.approx(float(theirs.compute_diag_trace(cov.clone())), rel=1e-12)


def test_determinant_matches_numpy_float64():
    from delve_fast.metrics import compute_cov_determinant

    cov = _random_cov(7, c=4)
    expected = float(np.linalg.det(cov.numpy()))
    # Product of 4 eigenvalues vs LU: both backward stable; cond(cov) is small, so 1e-10 relative is ample.
    assert compute_cov_determinant(cov) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match=r"square covariance matrix, got shape \(2, 3\)"):
        compute_cov_determinant(torch.zeros(2, 3))


def test_tqdm_handler_writes_delves_format(capsys):
    import logging

    from delve_fast.logger import TqdmLoggingHandler

    logger = logging.getLogger("delve_fast.test_compat")
    handler = TqdmLoggingHandler()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("hello %s", "there")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    captured = capsys.readouterr()
    assert "WARNING:delve:hello there" in captured.out + captured.err


def _write_results(tmp_path) -> str:
    from torch import nn

    from delve_fast import SaturationTracker

    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    path = str(tmp_path / "run")
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with SaturationTracker(path, save_to="csv", modules=model, device="cpu", stats=["lsat", "idim"]) as tr:
            for _ in range(2):
                model(torch.randn(32, 5, generator=gen))
                tr.add_scalar("accuracy", 0.5)
                tr.add_saturations()
    return path + ".csv"


def test_plotting_helpers_read_the_csv_and_write_delves_file_names(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from delve_fast.writers import extract_layer_stat, plot_scatter_from_results, plot_stat_level_from_results

    csv_path = _write_results(tmp_path)
    df = pd.read_csv(csv_path, sep=";", index_col=0)
    row, pm = extract_layer_stat(df, epoch=1, primary_metric="accuracy", stat="saturation", state_mode="train")
    assert list(row.columns) == ["train-saturation_0", "train-saturation_2"]
    assert pm == 0.5
    np.testing.assert_array_equal(row.to_numpy()[0], df.loc[1, ["train-saturation_0", "train-saturation_2"]])
    with pytest.raises(ValueError, match="epoch 5 is not in the table"):
        extract_layer_stat(df, epoch=5)

    ax = plot_stat_level_from_results(csv_path, epoch=-1, stat="idim", primary_metric="accuracy")
    png = tmp_path / "run_idim_train_epoch_1.png"
    assert png.is_file() and png.stat().st_size > 0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2"]
    assert ax.get_ylabel() == "intrinsic-dimensionality"
    ys = ax.lines[0].get_ydata()
    np.testing.assert_array_equal(
        ys, df.loc[1, ["train-intrinsic-dimensionality_0", "train-intrinsic-dimensionality_2"]]
    )
    with pytest.raises(ValueError, match="stat='nope' is not a statistic"):
        plot_stat_level_from_results(csv_path, epoch=0, stat="nope")

    samples = pd.DataFrame({"train-embedding_0": [[(0.0, 1.0), (2.0, 3.0)]]})
    ax = plot_scatter_from_results(str(tmp_path / "emb.csv"), 0, "embed_train", samples)
    offsets = np.concatenate([c.get_offsets() for c in ax.collections])
    np.testing.assert_array_equal(offsets, [[0.0, 1.0], [2.0, 3.0]])
    assert (tmp_path / "emb_embed_train_epoch_0.png").is_file()
    assert plot_scatter_from_results(str(tmp_path / "e.csv"), 0, "embed", pd.DataFrame()) is None
    assert not math.isnan(float(ys[0]))
