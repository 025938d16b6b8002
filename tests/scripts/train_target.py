"""A tiny training run for the crash and checkpoint tests (run as a subprocess).

Usage::

    python train_target.py SAVEFILE EPOCHS INITIAL_EPOCH [--batches B] [--stop-after E:B --checkpoint PATH]
                                                          [--resume-from PATH] [--no-fsync]
    python train_target.py --serve

``--serve`` pays the interpreter start (importing torch takes seconds) once:
it prints ``serving``, then reads one JSON argument list per line from stdin,
forks a child that runs it, and prints ``exit <pid> <exit code>`` when the
child ends (the exit code is negative for a signal). The parent never
computes anything, so the children start from a clean torch (no thread pools).

Every epoch feeds ``B`` train batches and one eval batch, each drawn from a
generator seeded by (epoch, batch), so any process reproduces any epoch's
data; the model's weights are fixed (seed 0) and never trained, so epochs do
not depend on each other. Each epoch ends with ``add_saturations()`` (csv and
npy writers). ``ready`` is printed once the tracker is built.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch import nn

from delve_fast import SaturationTracker


def batch(epoch: int, index: int, rows: int = 24) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 * epoch + index)
    return torch.randn(rows, 6, generator=gen, dtype=torch.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("savefile")
    parser.add_argument("epochs", type=int)
    parser.add_argument("initial_epoch", type=int)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--stop-after", default=None, help="E:B - save a checkpoint after batch B of epoch E, exit")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--resume-from", default=None)
    parser.add_argument("--no-fsync", action="store_true", help="writer_args={'fsync': False}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    tracker = SaturationTracker(
        args.savefile,
        save_to=["csv", "npy"],
        modules=model,
        device="cpu",
        stats=["lsat", "idim", "trc", "cov"],
        initial_epoch=args.initial_epoch,
        writer_args={"fsync": not args.no_fsync},
    )
    start_epoch, start_batch = args.initial_epoch, 0
    if args.resume_from:
        state = torch.load(args.resume_from, weights_only=False)
        tracker.load_state_dict(state["tracker"])
        start_epoch, start_batch = state["epoch"], state["batch"]
    stop = tuple(int(v) for v in args.stop_after.split(":")) if args.stop_after else None
    print(f"ready {os.getpid()}", flush=True)
    with torch.no_grad():
        for epoch in range(start_epoch, args.epochs):
            model.train()
            for index in range(start_batch if epoch == start_epoch else 0, args.batches):
                out = model(batch(epoch, index))
                tracker.add_scalar("loss", float(out.square().mean()))  # per step: the last one wins
                if stop == (epoch, index):
                    torch.save({"tracker": tracker.state_dict(), "epoch": epoch, "batch": index + 1}, args.checkpoint)
                    return 0
            model.eval()
            model(batch(epoch, 99))
            tracker.add_saturations()
    tracker.close()
    return 0


def serve() -> int:
    # Imported once here, not in every child: the CSV writer needs pandas, and the hooks'
    # torch.compiler.disable imports torch._dynamo (seconds), on a tracker that never runs.
    import pandas  # noqa: F401

    SaturationTracker("unused", save_to=[], modules=nn.Linear(1, 1), device="cpu", nosave=True).close()

    print("serving", flush=True)
    for line in sys.stdin:
        argv = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = main(argv)
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main())
