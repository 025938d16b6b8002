"""A short, real training run with the saturation tracker switched on.

A small CNN (four ``Conv2d`` and three ``Linear`` layers) learns scikit-learn's
bundled 8x8 handwritten digits (``sklearn.datasets.load_digits``: 1797 images,
shipped inside scikit-learn, so nothing is downloaded). Every epoch has a
training pass and an evaluation pass; :class:`delve_fast.SaturationTracker`
records saturation and intrinsic dimensionality of every layer in both modes
and writes delve's CSV and per-epoch plots. At the end the demo draws all
epochs in one heat map and prints a per-layer table and the files it wrote.

Run it with ``make demo``, ``delve-fast demo`` or ``python -m delve_fast demo``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

#: Base name of the tracker's files inside the output folder (``digits.csv``, ``digits_lsat_train_epoch_0.png``, ...).
RUN_NAME = "digits"


class DemoError(RuntimeError):
    """A problem with the demo's options, described in one line for the user."""


@dataclass
class DemoConfig:
    """Options of the demo run.

    Attributes
    ----------
    epochs : int
        Number of epochs; each has one training and one evaluation pass.
    device : str
        Torch device for the model and the tracker, e.g. ``"cpu"`` or ``"cuda:0"``.
    backend : str
        delve_fast backend: ``"auto"``, ``"cpp"`` or ``"torch"``.
    output : Path
        Folder that receives every file the run writes.
    subset : int or None
        Use only this many images (stratified), for quick tests; ``None`` uses all 1797.
    batch_size : int
        Mini-batch size for training and evaluation.
    lr : float
        Adam learning rate.
    seed : int
        Seed for the split, the shuffling and the weights.
    progress : bool
        Show tqdm progress bars when stderr is a terminal. When it is not (output
        redirected to a file, as on a cluster) the bars stay off and one line per
        epoch is written to stderr instead, so logs do not fill with carriage returns.
    threads : int or None
        CPU threads torch may use during the run (restored afterwards); ``None`` keeps torch's
        setting. The default is 1: the model is so small that splitting its tiny matrix products
        over threads costs more than it saves, and on a busy machine many times more.
    """

    epochs: int = 5
    device: str = "cpu"
    backend: str = "auto"
    output: Path = field(default_factory=lambda: Path("runs/demo"))
    subset: int | None = None
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    progress: bool = True
    threads: int | None = 1


@dataclass
class DemoResult:
    """What a demo run produced.

    Attributes
    ----------
    csv_path : Path
        The delve-format CSV written by the tracker.
    heatmap_path : Path
        Saturation of every layer across all epochs, one picture.
    epoch_plots : list of Path
        The per-epoch plots of delve's plot writer.
    files : list of Path
        Every file written under the output folder.
    table : str
        The closing per-layer table, as printed.
    feature_sizes : dict
        Feature-space size (channels or output features) of every tracked layer.
    test_accuracy : float
        Accuracy on the held-out images after the last epoch.
    seconds : float
        Wall time of the run (data, training, tracking, plots).
    """

    csv_path: Path
    heatmap_path: Path
    epoch_plots: list[Path]
    files: list[Path]
    table: str
    feature_sizes: dict[str, int]
    test_accuracy: float
    seconds: float


class DigitsCNN(nn.Module):
    """A small CNN for 1x8x8 digit images.

    Four 3x3 convolutions (8x8 -> 8x8 -> 4x4 -> 2x2 -> 2x2) followed by three
    linear layers. Activations and pooling are functional, so the tracker sees
    exactly the seven layers ``conv1`` ... ``conv4``, ``fc1`` ... ``fc3``.

    Parameters
    ----------
    num_classes : int
        Number of output classes.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(64, 64, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(64 * 2 * 2, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(B, 1, 8, 8)`` batch to ``(B, num_classes)`` logits."""
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        x = F.relu(self.conv4(x))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def feature_sizes(model: nn.Module) -> dict[str, int]:
    """Feature-space size of every Conv2d (channels) and Linear (output features) child, by name."""
    sizes: dict[str, int] = {}
    for name, module in model.named_children():
        if isinstance(module, nn.Conv2d):
            sizes[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            sizes[name] = module.out_features
    return sizes


def load_digits_split(
    subset: int | None = None, seed: int = 0, test_fraction: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load scikit-learn's digits and split them into train and test tensors.

    Parameters
    ----------
    subset : int, optional
        Keep only this many images (a stratified sample); default all 1797.
    seed : int
        Random seed of the sampling and the split.
    test_fraction : float
        Share of images held out for evaluation.

    Returns
    -------
    tuple of Tensor
        ``x_train (N, 1, 8, 8) float32`` scaled to [0, 1], ``y_train (N,) int64``,
        ``x_test``, ``y_test``.
    """
    _require_demo_extra()
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    if subset is not None:
        if subset < 20:
            raise DemoError(f"--subset must be at least 20 images, got {subset}")
        if subset < len(labels):
            images, _, labels, _ = train_test_split(
                images, labels, train_size=subset, random_state=seed, stratify=labels
            )
    n_classes = len(np.unique(labels))
    stratify = labels if round(test_fraction * len(labels)) >= n_classes else None
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    return (torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test), torch.from_numpy(y_test))


def _require_demo_extra() -> None:
    """Stop with the install command when the demo's own dependencies are missing."""
    import importlib

    missing = []
    for module, package in (("sklearn", "scikit-learn"), ("tqdm", "tqdm")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise DemoError(
            f"the demo needs {' and '.join(missing)}, which delve_fast itself does not; "
            "install them with: pip install 'delve_fast[demo]' (or: pip install scikit-learn tqdm)"
        )


def show_bars(progress: bool, stream: TextIO) -> bool:
    """Whether to draw progress bars on ``stream``: only when asked and ``stream`` is a terminal.

    A bar redraws itself with a carriage return several times a second; in a file
    (a cluster job's log) every redraw stays, hundreds of them per epoch.
    """
    if not progress:
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed or detached stream
        return False


def _resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DemoError(f"unknown device {name!r}; use e.g. 'cpu' or 'cuda:0'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DemoError(f"device {name!r} was requested but no CUDA device is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise DemoError(f"device {name!r} is not supported by the demo; use 'cpu' or 'cuda'")
    return device


def _check_backend(backend: str, device: torch.device) -> str:
    from delve_fast import ops

    if backend not in ("auto", "cpp", "torch"):
        raise DemoError(f"unknown backend {backend!r}; choose auto, cpp or torch")
    try:
        return ops.resolve_backend(device.type, backend)
    except RuntimeError as exc:
        raise DemoError(str(exc).splitlines()[0]) from None


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(torch.split(order, batch_size))


def run_demo(config: DemoConfig, stream: TextIO | None = None) -> DemoResult:
    """Train the digits CNN with the tracker on and report what it saw.

    Parameters
    ----------
    config : DemoConfig
        The run's options.
    stream : file-like, optional
        Where the summary is printed; default ``sys.stdout``. Progress bars go
        to ``sys.stderr``.

    Returns
    -------
    DemoResult
        Paths written, the printed table and the final accuracy.

    Raises
    ------
    DemoError
        For an unusable device, backend or option value.
    """
    out = stream if stream is not None else sys.stdout
    start = time.perf_counter()
    if config.epochs < 1:
        raise DemoError(f"--epochs must be at least 1, got {config.epochs}")
    if config.batch_size < 2:
        raise DemoError(f"batch size must be at least 2, got {config.batch_size}")
    device = _resolve_device(config.device)
    backend = _check_backend(config.backend, device)
    output = Path(config.output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DemoError(f"cannot create output folder {output}: {exc.strerror or exc}") from None
    before = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}

    saved_threads = torch.get_num_threads()
    if config.threads is not None:
        if config.threads < 1:
            raise DemoError(f"--threads must be at least 1, got {config.threads}")
        torch.set_num_threads(config.threads)
    try:
        return _train_and_report(config, device, backend, output, before, start, out)
    finally:
        torch.set_num_threads(saved_threads)


def _train_and_report(
    config: DemoConfig,
    device: torch.device,
    backend: str,
    output: Path,
    before: dict[Path, int],
    start: float,
    out: TextIO,
) -> DemoResult:
    _require_demo_extra()
    from tqdm import tqdm

    from delve_fast import SaturationTracker
    from delve_fast import report as rep

    torch.manual_seed(config.seed)
    x_train, y_train, x_test, y_test = load_digits_split(config.subset, config.seed)
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)
    model = DigitsCNN().to(device)
    sizes = feature_sizes(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    print(
        f"delve_fast demo: {len(sizes)} layers of a small CNN on scikit-learn's 8x8 digits, "
        f"{len(y_train)} training / {len(y_test)} test images, {config.epochs} epoch(s), "
        f"device {device}, backend {backend}",
        file=out,
        flush=True,
    )

    savefile = output / RUN_NAME
    tracker = SaturationTracker(
        str(savefile),
        save_to=["csv", "plot"],
        modules=model,
        stats=["lsat", "idim"],
        device=str(device),
        backend=config.backend,
    )
    generator = torch.Generator().manual_seed(config.seed)
    bars = show_bars(config.progress, sys.stderr)
    # Without bars (output not a terminal), one line per epoch tells a log reader how far it got.
    epoch_lines = config.progress and not bars
    test_accuracy = float("nan")
    train_loss = float("nan")
    for epoch in range(config.epochs):
        model.train()
        total_loss, seen = 0.0, 0
        bar = tqdm(
            _batches(len(y_train), config.batch_size, generator),
            desc=f"epoch {epoch + 1}/{config.epochs} train",
            unit="batch",
            disable=not bars,
            file=sys.stderr,
        )
        for idx in bar:
            idx = idx.to(device)
            logits = model(x_train[idx])
            loss = F.cross_entropy(logits, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}")
        train_loss = total_loss / max(seen, 1)

        model.eval()
        correct, test_loss = 0, 0.0
        bar = tqdm(
            _batches(len(y_test), config.batch_size, None),
            desc=f"epoch {epoch + 1}/{config.epochs} eval ",
            unit="batch",
            disable=not bars,
            file=sys.stderr,
        )
        with torch.no_grad():
            for idx in bar:
                idx = idx.to(device)
                logits = model(x_test[idx])
                test_loss += F.cross_entropy(logits, y_test[idx], reduction="sum").item()
                correct += int((logits.argmax(1) == y_test[idx]).sum().item())
                bar.set_postfix(acc=f"{correct / len(y_test):.3f}")
        test_accuracy = correct / len(y_test)

        if epoch_lines:
            print(
                f"epoch {epoch + 1}/{config.epochs}: train loss {train_loss:.3f}, test accuracy {test_accuracy:.3f}",
                file=sys.stderr,
                flush=True,
            )
        tracker.add_scalar("train_loss", train_loss)
        tracker.add_scalar("test_loss", test_loss / len(y_test))
        tracker.add_scalar("test_accuracy", test_accuracy)
        tracker.add_saturations()
    tracker.close()

    csv_path = savefile.with_suffix(".csv")
    if not csv_path.is_file():
        raise DemoError(f"the tracker did not write {csv_path}")
    run = rep.load_run(csv_path)
    heatmap = rep.plot_heatmap(
        run,
        rep.heatmap_path(csv_path, output),
        title=f"Saturation of each layer of the digits CNN over {config.epochs} epoch(s)",
    )
    table = rep.format_table(rep.layer_table(run, sizes))
    seconds = time.perf_counter() - start

    files = sorted(p for p in output.rglob("*") if p.is_file() and before.get(p) != p.stat().st_mtime_ns)
    epoch_plots = [p for p in files if p.suffix == ".png" and "_epoch_" in p.name]
    print(
        f"\nAfter {config.epochs} epoch(s): train loss {train_loss:.3f}, test accuracy {test_accuracy:.3f} "
        f"({seconds:.1f} s)",
        file=out,
    )
    print("Final saturation (sat), intrinsic dimensionality (idim) and feature-space size per layer:", file=out)
    print(table, file=out)
    print(_describe_files(csv_path, heatmap, epoch_plots, files), file=out, flush=True)
    return DemoResult(
        csv_path=csv_path,
        heatmap_path=heatmap,
        epoch_plots=epoch_plots,
        files=files,
        table=table,
        feature_sizes=sizes,
        test_accuracy=test_accuracy,
        seconds=seconds,
    )


def _describe_files(csv_path: Path, heatmap: Path, epoch_plots: list[Path], files: list[Path]) -> str:
    lines = ["\nFiles written:"]
    lines.append(f"  {csv_path}  (delve-format CSV, one row per epoch)")
    lines.append(f"  {heatmap}  (saturation of every layer across all epochs)")
    numbered = {p: p.stem.rsplit("_", 1)[-1] for p in epoch_plots}
    epochs = sorted({int(n) for n in numbered.values() if n.isdigit()})
    if epochs:
        last = epochs[-1]
        final = [p for p, n in numbered.items() if n == str(last)]
        for p in final:
            lines.append(f"  {p}  (delve's per-epoch plot, last epoch)")
        earlier = len(epoch_plots) - len(final)
        if earlier:
            lines.append(
                f"  ... and {earlier} more per-epoch plots for epochs {epochs[0]}-{last - 1} in {final[0].parent}"
            )
    else:
        lines.extend(f"  {p}" for p in epoch_plots)
    listed = {csv_path, heatmap, *epoch_plots}
    for p in files:
        if p not in listed:
            lines.append(f"  {p}")
    return "\n".join(lines)
