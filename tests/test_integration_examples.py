"""Every script in docs/examples runs as written, on its tiny data, and writes what its docstring says."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from delve_fast.integrations._testing import read_csv_rows

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def run_example(name: str, output: Path, monkeypatch, capsys) -> str:
    """Run the script as ``__main__`` with its command line, in this interpreter; return what it printed.

    In-process, so the frameworks the other tests imported are not imported again (seconds each).
    """
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), "--output", str(output), "--epochs", "2"])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(
        ["lightning_saturation.py", "transformers_saturation.py", "wandb_saturation.py"]
    )


def test_lightning_example(tmp_path, monkeypatch, capsys):
    pytest.importorskip("lightning.pytorch")
    run_example("lightning_saturation.py", tmp_path, monkeypatch, capsys)
    rows = read_csv_rows(str(tmp_path / "saturation.csv"))
    assert len(rows) == 2 and all(any(k.startswith("eval-saturation") for k in r) for r in rows)
    assert (tmp_path / "saturation_lsat_train_epoch_1.png").exists()
    (metrics,) = (tmp_path / "logs").rglob("metrics.csv")
    assert "train-saturation_net-0" in metrics.read_text().splitlines()[0]


def test_transformers_example(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    out = run_example("transformers_saturation.py", tmp_path, monkeypatch, capsys)
    assert "2 saturation rows in trainer.state.log_history" in out
    rows = read_csv_rows(str(tmp_path / "saturation.csv"))
    assert len(rows) == 2 and all(any(k.startswith("eval-saturation") for k in r) for r in rows)


def test_wandb_example(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    # The example passes dir=<output> to wandb.init, so its run lands in tmp_path whatever wandb cached.
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run_example("wandb_saturation.py", tmp_path, monkeypatch, capsys)
    assert len(read_csv_rows(str(tmp_path / "saturation.csv"))) == 2
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert run_file.stat().st_size > 0
    assert (tmp_path / "saturation_saturation_heatmap.png").exists()
