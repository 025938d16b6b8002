"""The ``wandb`` writer against a real, offline Weights & Biases run, read back from the run's own file."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
import torch
from torch import nn

wandb = pytest.importorskip("wandb", reason="needs wandb (pip install 'delve_fast[wandb]')")
from wandb.proto import wandb_internal_pb2  # noqa: E402

from delve_fast import SaturationTracker  # noqa: E402
from delve_fast.integrations._testing import assert_rows_equal, read_csv_rows  # noqa: E402
from delve_fast.writers import WRITERS  # noqa: E402
from delve_fast.writers.wandb_writer import WandbWriter  # noqa: E402

STATS = ["lsat", "idim", "trc"]


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """Every run offline, in this test's folder: nothing reaches the network or the user's settings.

    wandb reads these variables once per process and caches them, so every
    ``wandb.init`` in these tests also passes ``mode`` and ``dir`` itself.
    """
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    if wandb.run is not None:
        wandb.run.finish()


def offline_init(tmp_path: Path, **kwargs) -> dict:
    return {"mode": "offline", "dir": str(tmp_path), "project": "delve-fast-test", **kwargs}


def _records(raw: bytes) -> list[bytes]:
    """The protobuf records of W&B's record log (the format of an offline run's ``run-<id>.wandb``).

    A 7-byte file header (``:W&B``, magic, version), then 32 KiB blocks of
    chunks, each with a 7-byte header (CRC32, length, type: full, first,
    middle or last piece of one record).
    """
    assert raw[:4] == b":W&B"
    block, pos, pieces, records = 32768, 7, b"", []
    while pos + 7 <= len(raw):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += room
            continue
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(data)
        elif kind == 2:
            pieces = data
        elif kind == 3:
            pieces += data
        elif kind == 4:
            records.append(pieces + data)
    return records


def read_history(run_dir: Path, wait_s: float = 60.0) -> list[dict]:
    """The history rows of an offline run, once its file holds the run's exit record.

    ``run.finish()`` can return before W&B's service has written the last
    records, so the file is re-read until the exit record is there.
    """
    (path,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + wait_s
    while True:
        parsed = []
        for data in _records(path.read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            parsed.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in parsed) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any(r.WhichOneof("record_type") == "exit" for r in parsed), f"{path} was never completed"
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in parsed
        if r.WhichOneof("record_type") == "history"
    ]


def train_two_epochs(model: nn.Module, *trackers: SaturationTracker) -> None:
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(48, 6, generator=g), torch.randint(0, 3, (48,), generator=g)
    for _ in range(2):
        model.train()
        for i in range(0, 48, 16):
            loss = nn.functional.cross_entropy(model(x[i : i + 16]), y[i : i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            model(x[:32])
        for tracker in trackers:
            tracker.add_scalar("train_loss", loss.item())
            tracker.add_saturations()


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))


def test_registered_under_wandb():
    assert WRITERS["wandb"] is WandbWriter


def test_writer_starts_an_offline_run_and_logs_every_value_with_the_epoch(tmp_path):
    net = model()
    # Two trackers on the same model see the same batches: a plain one writing CSV, one writing to W&B.
    plain = SaturationTracker(str(tmp_path / "plain"), save_to="csv", modules=net, device="cpu", stats=STATS)
    tracked = SaturationTracker(
        str(tmp_path / "wb"),
        save_to="wandb",
        modules=net,
        device="cpu",
        stats=STATS,
        writer_args={"wandb_init": offline_init(tmp_path, name="writer")},
    )
    writer = tracked.writer
    run_dir = Path(writer.run.dir).parent
    assert run_dir.is_relative_to(tmp_path)
    train_two_epochs(net, plain, tracked)
    plain.close()
    tracked.close()
    assert wandb.run is None  # the writer started the run, so it finished it

    expected = read_csv_rows(str(tmp_path / "plain.csv"))
    assert len(expected) == 2
    rows = [h for h in read_history(run_dir) if "delve/epoch" in h]
    assert [h["delve/epoch"] for h in rows] == [0, 1]
    hashes = []
    for i, row in enumerate(rows):
        # W&B stores the image as nested keys: delve/saturation_heatmap/{_type,path,...}
        heatmap = {k.rsplit("/", 1)[1]: v for k, v in row.items() if k.startswith("delve/saturation_heatmap/")}
        values = {k.removeprefix("delve/"): v for k, v in row.items() if k.startswith("delve/") and k.count("/") == 1}
        values.pop("epoch")
        assert_rows_equal(values, expected[i], f"W&B history row {i}")
        # The heat map went in as an image file of the run.
        assert heatmap["_type"] == "image-file"
        image = run_dir / "files" / heatmap["path"]
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        hashes.append(heatmap["sha256"])
    assert hashes[0] != hashes[1]  # epoch 1's map has a second column: a new picture, not the same one again
    assert len(writer.heatmap_paths) == 2 and Path(writer.heatmap_paths[-1]).exists()


def test_writer_logs_into_the_active_run_and_leaves_it_open(tmp_path):
    run = wandb.init(**offline_init(tmp_path, name="active"))
    assert Path(run.dir).is_relative_to(tmp_path)
    for step in range(5):  # the user's own metric, at its own steps, before the tracker logs
        run.log({"loss": 1.0 / (step + 1)})
    net = model()
    tracked = SaturationTracker(
        str(tmp_path / "wb"),
        save_to=["wandb"],
        modules=net,
        device="cpu",
        stats=["lsat"],
        writer_args={"wandb_images": False},
    )
    assert tracked.writer.writers[0].run is run
    train_two_epochs(net, tracked)
    tracked.close()
    assert wandb.run is run  # still open: it belongs to the user
    run.finish()
    rows = [h for h in read_history(Path(run.dir).parent) if "delve/epoch" in h]
    assert [h["delve/epoch"] for h in rows] == [0, 1]
    assert all(not any(k.endswith("_heatmap") for k in h) for h in rows)
    assert all(h["_step"] >= 5 for h in rows)  # after the user's steps, so W&B kept them


def test_bad_writer_args():
    with pytest.raises(TypeError, match="wandb_init"):
        WandbWriter("x", wandb_init=["project"])
