"""Refinement through the Model API: refine_steps everywhere, the gap in .obs, the plots."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

import scamort
from tests.conftest import make_counts

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def model() -> scamort.Model:
    trained = scamort.Model(make_counts(n_cells=300, seed=4))
    trained.train(max_epochs=15, progress_bar=False)
    return trained


def test_refine_steps_reaches_every_query_and_leaves_weights_alone(model) -> None:
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    cells = np.arange(40)
    encoder = model.get_latent_representation(indices=cells)
    refined = model.get_latent_representation(indices=cells, refine_steps=10)
    assert refined.shape == encoder.shape and not np.allclose(refined, encoder)
    np.testing.assert_array_equal(refined, model.refine(indices=cells, n_steps=10).mean)
    assert model.get_elbo(indices=cells, refine_steps=10) > model.get_elbo(indices=cells) - 0.5
    assert np.isfinite(model.get_marginal_ll(indices=cells, n_mc_samples=20, refine_steps=5))
    expression = model.get_normalized_expression(indices=cells, refine_steps=5)
    assert isinstance(expression, pd.DataFrame) and expression.shape == (40, 60)
    for name, tensor in model.module.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)


def test_refine_steps_is_validated(model) -> None:
    with pytest.raises(scamort.InputError, match="refine_steps must be an integer >= 0"):
        model.get_elbo(refine_steps=-1)
    with pytest.raises(scamort.InputError, match="without modality="):
        model.get_latent_representation(modality="rna", refine_steps=3)


def test_gap_goes_to_obs_and_plots(model) -> None:
    cells = model.adata[:30].copy()
    scamort.tl.amortization_gap(cells, model, steps=(2, 5), n_optimum_steps=20)
    gap = cells.obs["scamort_amortization_gap"]
    assert gap.shape == (30,) and np.isfinite(gap).all() and gap.mean() > 0
    assert cells.obsm["scamort_amortization_gap_curve"].shape == (30, 3)
    assert cells.uns["scamort_amortization_gap"]["params"]["steps"] == [0, 2, 5]
    measured = model.amortization_gap(indices=np.arange(30), steps=(2, 5), n_optimum_steps=20)
    assert type(scamort.pl.amortization_gap(measured)).__name__ == "Figure"
    observed = pd.DataFrame(cells.X.toarray(), index=cells.obs_names, columns=cells.var_names)
    figure = scamort.pl.imputation(observed, model.impute(cells), n_features=3)
    assert len(figure.axes) == 3
