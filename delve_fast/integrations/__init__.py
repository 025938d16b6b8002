"""Saturation tracking inside training frameworks.

Each submodule needs its framework, installed as an extra; none is imported by
``import delve_fast`` or by importing this package:

=============================================  ===================================  ==========================
module                                         adds                                 install
=============================================  ===================================  ==========================
:mod:`delve_fast.integrations.lightning`       ``SaturationCallback`` (Lightning)   ``delve_fast[lightning]``
:mod:`delve_fast.integrations.transformers`    ``SaturationCallback`` (HF Trainer)  ``delve_fast[hf]``
=============================================  ===================================  ==========================

The Weights & Biases writer is ``save_to="wandb"`` (extra ``delve_fast[wandb]``).
"""
