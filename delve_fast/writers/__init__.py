"""Save strategies for the tracker's statistics.

Pass a key (or a list of keys and/or writer instances) as ``save_to``:

=================================================  ===========================
key                                                writer
=================================================  ===========================
``csv``                                            :class:`CSVWriter`
``npy``                                            :class:`NPYWriter`
``print``                                          :class:`PrintWriter`
``tb``, ``tensorboard``                            :class:`TensorBoardWriter`
``csvplotting``, ``csvplot``, ``plot``, ``plotcsv``  :class:`CSVandPlottingWriter`
=================================================  ===========================
"""

from __future__ import annotations

from delve_fast.stats import STATMAP
from delve_fast.writers.base import AbstractWriter, CompositWriter
from delve_fast.writers.csv_writer import CSVWriter
from delve_fast.writers.npy_writer import NPYWriter
from delve_fast.writers.plotting import (
    extract_layer_stat,
    plot_scatter_from_results,
    plot_stat,
    plot_stat_level_from_results,
)
from delve_fast.writers.plotting_writer import CSVandPlottingWriter
from delve_fast.writers.print_writer import PrintWriter
from delve_fast.writers.tensorboard_writer import TensorBoardWriter
from delve_fast.writers.wandb_writer import WandbWriter

__all__ = [
    "AbstractWriter",
    "CompositWriter",
    "CSVWriter",
    "NPYWriter",
    "PrintWriter",
    "TensorBoardWriter",
    "CSVandPlottingWriter",
    "WRITERS",
    "STATMAP",
    "extract_layer_stat",
    "plot_stat",
    "plot_stat_level_from_results",
    "plot_scatter_from_results",
]

#: String keys accepted by ``save_to``, as in delve.
WRITERS: dict[str, type[AbstractWriter]] = {
    "csv": CSVWriter,
    "npy": NPYWriter,
    "print": PrintWriter,
    "tb": TensorBoardWriter,
    "tensorboard": TensorBoardWriter,
    "csvplotting": CSVandPlottingWriter,
    "csvplot": CSVandPlottingWriter,
    "plot": CSVandPlottingWriter,
    "plotcsv": CSVandPlottingWriter,
    "wandb": WandbWriter,
}
