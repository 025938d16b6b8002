"""SaturationCallback in a real Hugging Face Trainer run: values, files, log_history and a report_to integration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'delve_fast[hf]')")
pytest.importorskip("accelerate", reason="the Trainer needs accelerate (pip install 'delve_fast[hf]')")

# The model and the row labels of the torchrun job serve the single-process tests too.
from hf_ddp_scenario import Classifier as TinyClassifier  # noqa: E402
from hf_ddp_scenario import RowTagger  # noqa: E402

from delve_fast.integrations._testing import (  # noqa: E402
    ActivationRecorder,
    assert_rows_equal,
    read_csv_rows,
    replay,
)
from delve_fast.integrations.transformers import SaturationCallback  # noqa: E402

STATS = ["lsat", "idim", "trc"]
N_TRAIN, N_VAL, BATCH = 48, 32, 16


class DictDataset(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def make_args(tmp_path: Path, **kwargs) -> transformers.TrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=2,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        learning_rate=0.05,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    defaults.update(kwargs)
    return transformers.TrainingArguments(**defaults)


def run(tmp_path: Path, callback_kwargs: dict, **arg_kwargs):
    torch.manual_seed(0)
    model = TinyClassifier()
    tagger = RowTagger()
    recorder = ActivationRecorder(model, tagger.row_of)
    trainer = transformers.Trainer(
        model=model,
        args=make_args(tmp_path, **arg_kwargs),
        train_dataset=DictDataset(N_TRAIN, 0),
        eval_dataset=DictDataset(N_VAL, 1),
        callbacks=[tagger],
    )
    callback = SaturationCallback(str(tmp_path / "sat"), **callback_kwargs).attach(trainer)
    trainer.train()
    recorder.remove()
    return trainer, callback, recorder


def test_train_reports_same_values_as_plain_tracker(tmp_path):
    trainer, callback, recorder = run(tmp_path, dict(save_to="csv", stats=STATS), report_to=["tensorboard"])
    expected = replay(recorder.records, list(recorder.layers), rows=[0, 1], stats=STATS)
    # Each row holds the epoch's training batches and the evaluation that followed it.
    assert all(any(k.startswith("eval-") for k in row) and any(k.startswith("train-") for k in row) for row in expected)

    written = read_csv_rows(str(tmp_path / "sat.csv"))
    assert len(written) == 2
    for i in range(2):
        assert_rows_equal(written[i], expected[i], f"CSV row {i}")

    keys = set(expected[0])
    logged = [entry for entry in trainer.state.log_history if keys & set(entry)]
    assert len(logged) == 2
    for i, entry in enumerate(logged):
        assert_rows_equal({k: entry[k] for k in keys if k in entry}, expected[i], f"log_history entry {i}")
        assert entry["epoch"] == pytest.approx(i + 1)
        assert entry["step"] == 3 * (i + 1)

    # The report_to integration (TensorBoard here) received the values through Trainer.log.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_dir,) = {p.parent for p in (tmp_path / "out").rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for key in keys:
        (tag,) = [t for t in tags if t.endswith(key)]  # the HF callback may prefix "train/"
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [3, 6]
        for i, event in enumerate(events):
            # TensorBoard stores float32: compare at float32 resolution.
            assert event.value == pytest.approx(expected[i][key], rel=2**-23)

    assert callback.tracker is None
    assert all(len(layer._forward_hooks) == 0 for layer in recorder.layers.values())


def test_every_n_steps_without_evaluation(tmp_path):
    # 6 optimizer steps, a row every 4: one at step 4 and the rest (steps 5-6) at the end of training.
    torch.manual_seed(0)
    model = TinyClassifier()
    steps = {"done": 0}

    class StepCounter(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps["done"] = state.global_step

    recorder = ActivationRecorder(model, lambda mode: steps["done"] // 4)
    trainer = transformers.Trainer(
        model=model,
        args=make_args(tmp_path, eval_strategy="no"),
        train_dataset=DictDataset(N_TRAIN, 0),
        callbacks=[StepCounter()],
    )
    SaturationCallback(str(tmp_path / "steps"), every_n_epochs=None, every_n_steps=4, stats=STATS).attach(trainer)
    trainer.train()
    recorder.remove()
    expected = replay(recorder.records, list(recorder.layers), rows=[0, 1], stats=STATS)
    written = read_csv_rows(str(tmp_path / "steps.csv"))
    assert len(written) == 2
    for i in range(2):
        assert_rows_equal(written[i], expected[i], f"CSV row {i}")
    logged = [e for e in trainer.state.log_history if set(expected[0]) & set(e)]
    assert [e["step"] for e in logged] == [4, 6]


def test_without_attach_values_still_reach_log_history(tmp_path):
    torch.manual_seed(0)
    callback = SaturationCallback(str(tmp_path / "plain"), stats=["lsat"])
    trainer = transformers.Trainer(
        model=TinyClassifier(),
        args=make_args(tmp_path, eval_strategy="no", num_train_epochs=1),
        train_dataset=DictDataset(N_TRAIN, 0),
        callbacks=[callback],
    )
    with pytest.warns(RuntimeWarning, match=r"attach\(trainer\)"):
        trainer.train()
    logged = [e for e in trainer.state.log_history if any(k.startswith("train-saturation") for k in e)]
    assert len(logged) == 1
    assert len(read_csv_rows(str(tmp_path / "plain.csv"))) == 1


def test_attach_rejects_a_non_trainer():
    with pytest.raises(TypeError, match="transformers.Trainer"):
        SaturationCallback("unused").attach(object())


def test_ddp_on_two_processes_logs_the_merged_values_from_rank_zero_only(tmp_path):
    # torchrun starts 2 processes; the Trainer wraps the model in DDP on gloo and gives each rank
    # its shard. Each rank records what its tracked layers produced; one plain tracker replays both.
    import subprocess
    import sys

    scenario = Path(__file__).with_name("hf_ddp_scenario.py")
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(scenario)]
    proc = subprocess.run([*cmd, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    layers = ranks[0]["layers"]
    assert {row for row, *_ in ranks[1]["records"]} == {0, 1}  # rank 1 trained and evaluated
    expected = replay(ranks[0]["records"] + ranks[1]["records"], layers, rows=[0, 1], stats=STATS)
    assert all(any(k.startswith("eval-") for k in row) for row in expected)

    # Rank 0's CSV row = the statistics of both shards. Tolerance 1e-9: the merge adds the ranks'
    # float64 sums in another order than one state fed every batch (differences ~1e-15), which
    # the eigen solves of these full-rank 3..10-wide covariances amplify by far less than 1e6.
    written = read_csv_rows(str(out / "sat" / "run.csv"))
    assert len(written) == 2
    for i in range(2):
        assert set(written[i]) == set(expected[i])
        for key, want in expected[i].items():
            assert written[i][key] == pytest.approx(float(want), rel=1e-9, abs=0), (i, key)
    # Every rank computed the same merged values; only rank 0 writes files and logs them.
    assert ranks[0]["last_values"] == ranks[1]["last_values"]
    assert ranks[0]["writers"] == ["CSVWriter"] and ranks[1]["writers"] == []
    keys = set(expected[0])
    assert not any(keys & set(entry) for entry in ranks[1]["log_history"])
    logged = [entry for entry in ranks[0]["log_history"] if keys & set(entry)]
    assert len(logged) == 2
    for i, entry in enumerate(logged):
        for key in keys:
            assert entry[key] == pytest.approx(written[i][key], rel=1e-12, abs=0), (i, key)
