"""scamort: negative-binomial VAEs for single-cell omics.

The public API: :class:`Model`, :class:`Modality`, :mod:`datasets`, :mod:`pp` (preprocessing, e.g.
:func:`pp.concat_panels`), :mod:`tl` (tools writing into AnnData) and :mod:`pl` (plots).
"""

from scamort import datasets, pl, pp, tl
from scamort._version import __version__
from scamort.data.modality import Modality
from scamort.errors import InputError
from scamort.model import Model

__all__ = ["InputError", "Modality", "Model", "__version__", "datasets", "pl", "pp", "tl"]
