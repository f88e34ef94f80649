"""Conversion of a trained model into a PANN, in the order it happens:

- :mod:`~polyact.convert.supported_ops`: which torch operations are polynomial, which are
  activations to replace, and what to tell the user about the rest;
- :mod:`~polyact.convert.call_sites`: every call of an activation gets its own slot
  (:mod:`~polyact.convert.tracing` with ``torch.fx``, :mod:`~polyact.convert.module_swap`
  without), anything else that is not polynomial is refused by name
  (:mod:`~polyact.convert.sites`);
- :mod:`~polyact.convert.calibration`: range observers and the interval of each slot;
- :mod:`~polyact.convert.pipeline`: :func:`convert` fits each slot's polynomial and installs
  :class:`~polyact.nn.PolyAct` layers;
- :mod:`~polyact.convert.report`: what was fitted, with its error, depth and range;
- :mod:`~polyact.convert.storage`: model and PANN files that never run code from the file.
"""
from .pipeline import MaxPoolAveragedWarning, calibrate, convert
from .report import ConversionReport, LayerReport
from .sites import UnsupportedOperationError
from .storage import UntrustedFactory, load_model, load_pann, save_model, save_pann

__all__ = ["ConversionReport", "LayerReport", "MaxPoolAveragedWarning", "UnsupportedOperationError",
           "UntrustedFactory", "calibrate", "convert", "load_model", "load_pann", "save_model", "save_pann"]
