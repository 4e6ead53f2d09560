"""The user's description of one modality: where its counts are and how they are modelled."""

from __future__ import annotations

from dataclasses import dataclass

from scamort.errors import InputError

__all__ = ["BINARY_LIKELIHOODS", "LIKELIHOODS", "Modality"]

#: Likelihoods a modality may use.
LIKELIHOODS = ("nb", "zinb", "poisson", "nbmixture", "bernoulli", "bernoulli_depth")

#: Likelihoods of 0/1 values (counts need ``binarize=True``).
BINARY_LIKELIHOODS = ("bernoulli", "bernoulli_depth")


@dataclass(frozen=True)
class Modality:
    """Where one modality's counts live and which likelihood models them.

    Parameters
    ----------
    layer
        Layer of the modality's AnnData holding raw counts; ``None`` means ``.X``.
    obsm_key
        Read the counts from ``.obsm[obsm_key]`` instead (e.g. CITE-seq protein counts stored next to
        the RNA); a DataFrame's columns name the features.
    likelihood
        Counts: ``"nb"`` (negative binomial), ``"zinb"`` (zero-inflated NB), ``"poisson"`` or
        ``"nbmixture"`` (a background/foreground NB mixture as in totalVI, for protein: each count is
        ambient background or foreground, see
        ``scamort.nn.decoder.NegativeBinomialMixtureDecoder``). 0/1 values: ``"bernoulli"``
        (probabilities from z alone) or ``"bernoulli_depth"`` (``P(x = 1) = 1 - exp(-d × rate)``
        with ``d`` the cell's number of nonzero features, so depth enters like a library size, see
        ``scamort.nn.decoder.DepthBernoulliDecoder``).
    binarize
        Turn counts into presence (``x > 0``) before modelling; for accessibility with a Bernoulli.
    present_key
        Optional boolean ``.obs`` column: ``False`` marks cells that were not measured in this
        modality (their counts are ignored). In a MuData, cells absent from the modality's AnnData are
        missing it anyway. All-zero counts never count as missing.
    measured_key
        Optional feature-level mask, for batches measured on different panels (see
        ``scamort.data.measured``): a boolean matrix cells × features, True where the feature was
        measured, in ``.layers`` (counts in ``.X`` or a layer) or ``.obsm`` (counts in ``.obsm``), or a
        per-group boolean DataFrame groups × features in ``.uns`` whose ``index.name`` is the ``.obs``
        column of the groups (:func:`scamort.pp.concat_panels` writes one). Unmeasured entries are
        left out of the likelihood and the encoder, whatever is stored there; the library size counts
        measured features only. Never guessed from zeros. See ``docs/guide/protein_panels.md``.
    """

    layer: str | None = None
    obsm_key: str | None = None
    likelihood: str = "nb"
    binarize: bool = False
    present_key: str | None = None
    measured_key: str | None = None

    def __post_init__(self) -> None:
        if self.measured_key is not None and not (isinstance(self.measured_key, str) and self.measured_key):
            raise InputError(f"measured_key must be a non-empty string or None, got {self.measured_key!r}.")
        if self.likelihood not in LIKELIHOODS:
            raise InputError(
                f"Unknown likelihood {self.likelihood!r}; choose one of {', '.join(LIKELIHOODS)}."
            )
        if self.layer is not None and self.obsm_key is not None:
            raise InputError("Give a modality either layer= or obsm_key=, not both.")

    @property
    def is_binary(self) -> bool:
        """Whether the likelihood models 0/1 values (a Bernoulli)."""
        return self.likelihood in BINARY_LIKELIHOODS

    @property
    def source(self) -> str:
        """Where the counts are read from, as ``"X"``, ``"layers/NAME"`` or ``"obsm/KEY"``."""
        if self.obsm_key is not None:
            return f"obsm/{self.obsm_key}"
        return "X" if self.layer is None else f"layers/{self.layer}"
