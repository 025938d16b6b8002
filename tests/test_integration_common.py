"""Optional framework dependencies: never imported by ``import delve_fast``, and a missing one names its extra."""

from __future__ import annotations

import subprocess
import sys

import pytest

from delve_fast.integrations._common import TrackedRun

FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate", "wandb")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_delve_fast_imports_no_framework():
    code = (
        "import sys, delve_fast, delve_fast.integrations, delve_fast.writers\n"
        "from delve_fast.writers import WRITERS\n"
        "assert 'wandb' in WRITERS\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


MISSING = {
    # extra: (modules hidden, statement that needs them)
    "lightning": (("lightning", "pytorch_lightning"), "import delve_fast.integrations.lightning"),
    "hf": (("transformers",), "import delve_fast.integrations.transformers"),
    "wandb": (
        ("wandb",),
        "delve_fast.SaturationTracker({savefile!r}, save_to='wandb', modules=torch.nn.Linear(2, 2), device='cpu')",
    ),
}


def test_missing_package_names_the_extra(tmp_path):
    # A None entry in sys.modules makes `import name` fail as if the package were not installed.
    # One interpreter checks all three (each in a fresh state), to pay for torch's import once.
    code = "import sys, torch, delve_fast\n"
    for extra, (hidden, statement) in MISSING.items():
        code += (
            f"saved = {{m: sys.modules.pop(m, None) for m in {hidden!r}}}\n"
            + "".join(f"sys.modules[{m!r}] = None\n" for m in hidden)
            + "try:\n"
            + f"    {statement.format(savefile=str(tmp_path / extra))}\n"
            + "    print('NO ERROR')\n"
            + "except ImportError as exc:\n"
            + f"    print({extra!r}, '->', exc)\n"
            + "for m in saved: sys.modules.pop(m, None)\n"
        )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(MISSING), result.stdout
    for line, extra in zip(lines, MISSING, strict=True):
        assert line.startswith(f"{extra} ->") and f"pip install 'delve_fast[{extra}]'" in line, line


@pytest.mark.parametrize(
    ("epochs", "steps", "match"),
    [
        (1, 5, "not both"),
        (None, None, "must be a positive int"),
        (0, None, "every_n_epochs must be >= 1"),
        (None, 2.5, "every_n_steps must be a positive int"),
        (True, None, "every_n_epochs must be a positive int"),
    ],
)
def test_schedule_arguments_are_checked(epochs, steps, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TrackedRun("x", "csv", epochs, steps, True, {}, "SaturationCallback")


def test_savefile_given_twice():
    with pytest.raises(TypeError, match="savefile is given twice"):
        TrackedRun("x", "csv", 1, None, True, {"savefile": "y"}, "SaturationCallback")


def test_schedule_counts_epochs_and_optimizer_steps():
    run = TrackedRun("x", "csv", 2, None, True, {}, "cb")
    assert [run.epoch_ended() for _ in range(1)] == [False]
    assert run.epoch_ended() is True
    steps = TrackedRun("x", "csv", None, 2, True, {}, "cb")
    # Gradient accumulation repeats a step count; that must not make a second row due.
    assert [steps.step_ended(s) for s in (1, 2)] == [False, True]
    steps.due = False
    assert steps.step_ended(2) is False
    assert steps.step_ended(4) is True


def test_load_state_dict_rejects_foreign_state():
    run = TrackedRun("x", "csv", 1, None, True, {}, "SaturationCallback")
    with pytest.raises(ValueError, match="SaturationCallback.state_dict"):
        run.load_state_dict({"weights": 1})
