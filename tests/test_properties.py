"""Property-based bad-input suite (issue 7): random defects get one specific InputError, or are handled.

Every test builds small AnnData / MuData objects from hypothesis-drawn shapes, counts, defect positions and
values, and checks that scamort either refuses them with a clear :class:`scamort.InputError` (a specific
message fragment per kind of defect, pointing at the first offending cell/feature where it can) or handles
them correctly (valid variants give identical tensors / latents), and that the user's object is exactly as
it was afterwards: ``X``, layers, ``obs``, ``var``, ``obsm``, ``uns`` and the names, byte for byte (sparse
``data``/``indices``/``indptr`` included), for refused and accepted inputs alike.

Runs in well under a minute on 2 cores: most examples only construct ``scamort.Model`` (which validates
before any work); a handful train one epoch of a tiny network. ``SCAMORT_FUZZ_FACTOR=20 pytest
tests/test_properties.py`` runs 20x the examples with random (not derandomized) seeds. The number of
examples run is printed at the end of the module (see :func:`_report_examples`).
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import string
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import scamort
from scamort import InputError

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*names are not unique:UserWarning"),
    pytest.mark.filterwarnings("ignore::anndata.ImplicitModificationWarning"),
]

# ---------------------------------------------------------------------------------------------- settings
FUZZ_FACTOR = int(os.environ.get("SCAMORT_FUZZ_FACTOR", "1"))
EXAMPLES: Counter[str] = Counter()


def fuzz(max_examples: int) -> settings:
    """Hypothesis settings: deterministic by default; ``SCAMORT_FUZZ_FACTOR`` x more (random) on demand."""
    return settings(
        max_examples=max_examples * FUZZ_FACTOR,
        deadline=None,
        database=None,
        derandomize=FUZZ_FACTOR == 1,
        # CI: no shrinking (a failure is reported as drawn, fast); fuzzing: shrink to a minimal example.
        phases=[Phase.explicit, Phase.generate] if FUZZ_FACTOR == 1 else list(Phase),
        print_blob=True,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,  # the autouse torch seed fixture of conftest.py
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


def _count() -> None:
    """Count one hypothesis example for the calling test."""
    EXAMPLES[sys._getframe(1).f_code.co_name] += 1


@pytest.fixture(scope="module", autouse=True)
def _report_examples(request: pytest.FixtureRequest):
    """Print how many hypothesis examples this module ran (per test and in total)."""
    yield
    lines = [f"hypothesis examples run by {Path(__file__).name}: {sum(EXAMPLES.values())}"]
    lines += [f"    {name}: {n}" for name, n in sorted(EXAMPLES.items())]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is None:  # pragma: no cover - running with -p no:capture
        print("\n".join(lines))
        return
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(lines))


SMALL = {"n_hidden": 8, "n_latent": 2}  # tiny networks: construction and one epoch stay cheap
ONE_EPOCH = {"max_epochs": 1, "progress_bar": False, "batch_size": 16}
STORAGES = ("csr", "csc", "dense")
DTYPES = ("float32", "float64", "int32", "int64")


# --------------------------------------------------------------------------------- building the data
def store(counts: np.ndarray, storage: str = "csr", dtype: str = "float32") -> Any:
    """``counts`` as a dense array, CSR or CSC matrix of ``dtype``."""
    array = np.asarray(counts).astype(dtype)
    if storage == "dense":
        return array
    return {"csr": sp.csr_matrix, "csc": sp.csc_matrix}[storage](array)


def cell_names(n: int) -> list[str]:
    return [f"cell{i}" for i in range(n)]


def gene_names(n: int) -> list[str]:
    return [f"gene{j}" for j in range(n)]


def make_adata(
    counts: np.ndarray,
    *,
    storage: str = "csr",
    dtype: str = "float32",
    layer: bool = False,
    protein: np.ndarray | None = None,
) -> ad.AnnData:
    """An AnnData of ``counts`` with the obs columns and extra slots the tests use.

    ``counts`` go to ``X``, or to ``layers["counts"]`` (with log-normalised values in ``X``, as after a
    scanpy workflow) when ``layer``. ``obs`` has a categorical ``batch`` and ``label``, a string ``cond``
    and a float ``score``; ``obsm`` has ``X_pca`` (and ``protein``, a DataFrame, when given); ``uns`` has a
    nested dict: all must be left untouched.
    """
    n_cells, n_genes = counts.shape
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"b{i % 2}" for i in range(n_cells)]),
            "label": pd.Categorical([f"t{i % 3}" for i in range(n_cells)]),
            "cond": np.array([f"c{i % 2}" for i in range(n_cells)], dtype=object),
            "score": np.linspace(-1.0, 1.0, n_cells),
        },
        index=cell_names(n_cells),
    )
    matrix = store(counts, storage, dtype)
    if layer:
        with np.errstate(invalid="ignore"):
            normalised = np.log1p(np.abs(np.nan_to_num(np.asarray(counts, dtype=np.float64))))
        adata = ad.AnnData(
            X=normalised.astype(np.float32), obs=obs, var=pd.DataFrame(index=gene_names(n_genes))
        )
        adata.layers["counts"] = matrix
    else:
        adata = ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=gene_names(n_genes)))
    adata.obsm["X_pca"] = np.arange(n_cells * 2, dtype=np.float64).reshape(n_cells, 2)
    if protein is not None:
        adata.obsm["protein"] = pd.DataFrame(
            protein, index=adata.obs_names, columns=[f"p{k}" for k in range(protein.shape[1])]
        )
    adata.uns["note"] = {"keep": [1, 2, 3], "me": "intact"}
    return adata


def ensure_cells_nonempty(counts: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Give every all-zero row a count of 1 (in one of ``columns``, default any)."""
    counts = np.array(counts, copy=True)
    columns = np.arange(counts.shape[1]) if columns is None else np.asarray(columns)
    for row in np.flatnonzero(counts.sum(1) == 0):
        counts[row, columns[row % len(columns)]] = 1
    return counts


@st.composite
def count_matrices(
    draw: st.DrawFn,
    min_cells: int = 2,
    max_cells: int = 9,
    min_genes: int = 1,
    max_genes: int = 7,
    max_count: int = 40,
) -> np.ndarray:
    """Small non-negative integer counts (float64) in which every cell has at least one count."""
    n_cells = draw(st.integers(min_cells, max_cells))
    n_genes = draw(st.integers(min_genes, max_genes))
    counts = draw(hnp.arrays(np.int64, (n_cells, n_genes), elements=st.integers(0, max_count)))
    return ensure_cells_nonempty(counts.astype(np.float64))


def positions(draw: st.DrawFn, shape: tuple[int, int], min_size: int = 1, max_size: int = 4) -> list:
    """Distinct (row, column) positions in a matrix of ``shape``."""
    cells = st.tuples(st.integers(0, shape[0] - 1), st.integers(0, shape[1] - 1))
    return draw(st.lists(cells, min_size=min_size, max_size=max_size, unique=True))


# ---------------------------------------------------------------------- before / after comparison
def _matrix_state(matrix: Any) -> dict[str, Any]:
    """A deep, exact copy of a matrix's representation (sparse arrays included, not just its values)."""
    if matrix is None:
        return {"kind": "none"}
    if hasattr(matrix, "to_memory"):  # backed sparse dataset
        matrix = matrix.to_memory()
    if isinstance(matrix, pd.DataFrame):
        return {"kind": "frame", "frame": matrix.copy(deep=True)}
    if sp.issparse(matrix):
        names = ("data", "row", "col") if matrix.format == "coo" else ("data", "indices", "indptr")
        state = {"kind": "sparse", "format": matrix.format, "dtype": str(matrix.dtype), "shape": matrix.shape}
        return state | {name: np.array(getattr(matrix, name)) for name in names}
    array = np.array(matrix[()] if hasattr(matrix, "id") else matrix)  # h5py dataset or array
    return {"kind": "dense", "dtype": str(array.dtype), "array": array}


def _assert_same(now: Any, before: Any, what: str) -> None:
    if isinstance(before, pd.DataFrame):
        pd.testing.assert_frame_equal(now, before, check_exact=True, obj=what)
    elif isinstance(before, pd.Index):
        assert now.equals(before) and now.dtype == before.dtype, what
    elif isinstance(before, np.ndarray):
        assert now.dtype == before.dtype and now.shape == before.shape, what
        assert np.array_equal(now, before, equal_nan=now.dtype.kind in "fc"), what
    elif isinstance(before, dict):
        assert list(now) == list(before), what
        for key in before:
            _assert_same(now[key], before[key], f"{what}[{key!r}]")
    elif isinstance(before, list | tuple):
        assert type(now) is type(before) and len(now) == len(before), what
        for i, (a, b) in enumerate(zip(now, before, strict=True)):
            _assert_same(a, b, f"{what}[{i}]")
    else:
        assert now == before, f"{what}: {now!r} != {before!r}"


def snapshot(adata: ad.AnnData) -> dict[str, Any]:
    """Everything a user keeps in an AnnData, deep-copied (works for views and backed objects)."""
    state = {
        "is_view": adata.is_view,
        "isbacked": adata.isbacked,
        "X": _matrix_state(adata.X),
        "layers": {k: _matrix_state(v) for k, v in adata.layers.items()},
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "obs_names": adata.obs_names.copy(),
        "var_names": adata.var_names.copy(),
        "obsm": {k: _matrix_state(v) for k, v in adata.obsm.items()},
        "varm": {k: _matrix_state(v) for k, v in adata.varm.items()},
        "obsp": {k: _matrix_state(v) for k, v in adata.obsp.items()},
        "uns": copy.deepcopy(dict(adata.uns)),
    }
    if adata.isbacked:
        state["file_sha256"] = hashlib.sha256(Path(adata.filename).read_bytes()).hexdigest()
    return state


def assert_unchanged(adata: ad.AnnData, before: dict[str, Any]) -> None:
    """``adata`` is exactly as in ``before`` (a :func:`snapshot`)."""
    _assert_same(snapshot(adata), before, "adata")


def snapshot_mudata(mdata: md.MuData) -> dict[str, Any]:
    return {
        "obs": mdata.obs.copy(deep=True),
        "obs_names": mdata.obs_names.copy(),
        "obsm": {k: _matrix_state(v) for k, v in mdata.obsm.items()},
        "uns": copy.deepcopy(dict(mdata.uns)),
        "mod": {name: snapshot(mod) for name, mod in mdata.mod.items()},
    }


def assert_mudata_unchanged(mdata: md.MuData, before: dict[str, Any]) -> None:
    _assert_same(snapshot_mudata(mdata), before, "mdata")


def refused(make: Callable[[], Any], message: str) -> None:
    """``make()`` raises an InputError whose text contains the regex ``message``."""
    with pytest.raises(InputError, match=message):
        make()


def encoded(model: scamort.Model) -> dict[str, np.ndarray]:
    """The tensors a model was built from, densified: equal dicts mean equal training inputs."""
    data = model._data
    out = {
        "batch": data.batch_index.numpy(),
        "categorical": data.categorical.numpy(),
        "continuous": data.continuous.numpy(),
    }
    for name, m in data.modalities.items():
        matrix = sp.csr_matrix(
            (m.values.numpy(), m.indices.numpy(), m.indptr.numpy()), shape=(data.n_cells, m.n_features)
        )
        out[f"{name}.counts"] = matrix.toarray()
        out[f"{name}.log_library"] = m.log_library.numpy()
        out[f"{name}.log_factorial"] = m.log_factorial.numpy()
        out[f"{name}.present"] = m.present.numpy()
    return out


def assert_same_encoding(left: scamort.Model, right: scamort.Model) -> None:
    a, b = encoded(left), encoded(right)
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ============================================================================ 1. bad count values
NONFINITE = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}
DEFECT_KINDS = ("non-integer", "negative", "nan", "+inf", "-inf")


def defect_value(draw: st.DrawFn, kind: str, integer_dtype: bool) -> float:
    if kind in NONFINITE:
        return NONFINITE[kind]
    if kind == "negative":
        whole = draw(st.integers(1, 10**6))
        return -float(whole) if integer_dtype else -float(whole) + draw(st.sampled_from([0.0, 0.5, 0.999]))
    return draw(st.integers(0, 10**4)) + draw(st.floats(0.01, 0.99))  # non-integer


def expected_value_error(values: dict[tuple[int, int], float], feature: Callable[[int], str]) -> tuple:
    """What check_counts reports: the first failing check (non-finite, negative, non-integer), its count
    and first offending entry in row-major order."""
    classes = (
        ("NaN or infinite", lambda v: not np.isfinite(v)),
        ("negative", lambda v: np.isfinite(v) and v < 0),
        ("non-integer", lambda v: np.isfinite(v) and v >= 0 and v != round(v)),
    )
    for what, test in classes:
        hits = sorted(pos for pos, v in values.items() if test(v))
        if hits:
            row, col = hits[0]
            return what, len(hits), f"cell 'cell{row}', feature {feature(col)!r}"
    raise AssertionError("no defect")


@fuzz(60)
@given(counts=count_matrices(), data=st.data())
def test_bad_count_values_are_refused_with_count_and_location(
    counts: np.ndarray, data: st.DataObject
) -> None:
    """Non-integer, negative, NaN, +inf, -inf entries in X, a layer or an obsm DataFrame, in any storage
    and dtype, are refused naming the source, how many entries fail and where the first one is."""
    _count()
    where = data.draw(st.sampled_from(["X", "layer", "obsm"]), label="where")
    target = counts if where != "obsm" else np.ones((counts.shape[0], 3))
    places = positions(data.draw, target.shape, min_size=1, max_size=min(4, target.size))
    kinds = data.draw(st.lists(st.sampled_from(DEFECT_KINDS), min_size=len(places), max_size=len(places)))
    integer_dtype = all(k == "negative" for k in kinds) and data.draw(st.booleans(), label="int dtype")
    dtype = data.draw(st.sampled_from(["int32", "int64"] if integer_dtype else ["float32", "float64"]))
    storage = data.draw(st.sampled_from(STORAGES), label="storage")
    values = {
        pos: defect_value(data.draw, kind, integer_dtype) for pos, kind in zip(places, kinds, strict=True)
    }
    bad = np.array(target, dtype=np.float64)
    for (row, col), value in values.items():
        bad[row, col] = value
    if where == "obsm":
        adata = make_adata(counts, storage=storage, protein=bad.astype(dtype))
        source, feature = "adata.obsm['protein']", lambda c: f"p{c}"
        kwargs: dict[str, Any] = {
            "modalities": {"rna": scamort.Modality(), "prot": scamort.Modality(obsm_key="protein")}
        }
    else:
        adata = make_adata(bad, storage=storage, dtype=dtype, layer=where == "layer")
        source, feature = ("adata.X" if where == "X" else "adata.layers['counts']"), lambda c: f"gene{c}"
        kwargs = {"layer": "counts" if where == "layer" else None}
    what, n_bad, location = expected_value_error(values, feature)
    before = snapshot(adata)
    refused(
        lambda: scamort.Model(adata, **kwargs, **SMALL),
        re.escape(f"{source} has {n_bad} {what} entries (first at {location})"),
    )
    assert_unchanged(adata, before)


@fuzz(10)
@given(counts=count_matrices(), data=st.data())
def test_near_integer_float64_counts_are_refused(counts: np.ndarray, data: st.DataObject) -> None:
    """A float64 count that is not a whole number is refused even when float32 would round it to one
    (``3 + 1e-9``): the check must look at the user's values, not at the float32 copy."""
    _count()
    row, col = positions(data.draw, counts.shape, 1, 1)[0]
    bad = counts.copy()
    bad[row, col] = data.draw(st.integers(1, 1000)) + data.draw(st.sampled_from([1e-9, 1e-7, -1e-7]))
    adata = make_adata(bad, storage=data.draw(st.sampled_from(STORAGES)), dtype="float64")
    before = snapshot(adata)
    refused(lambda: scamort.Model(adata, **SMALL), r"adata\.X has 1 non-integer entries")
    assert_unchanged(adata, before)


def test_non_numeric_and_complex_counts_are_refused() -> None:
    counts = np.array([[1.0, 0.0], [0.0, 2.0]])
    for matrix, message in (
        (counts.astype(str), r"Counts must be numeric; got dtype <U"),
        (counts.astype(object), r"Counts must be numeric; got dtype object"),
        (counts.astype(np.complex64), r"dtype complex64"),
    ):
        adata = make_adata(counts)
        adata.X = matrix
        before = snapshot(adata)
        refused(lambda adata=adata: scamort.Model(adata, **SMALL), message)
        assert_unchanged(adata, before)


# ============================================================================ 2. empty cells and genes
@fuzz(30)
@given(counts=count_matrices(min_cells=1), data=st.data())
def test_empty_cells_are_refused_with_count_example_and_fix(counts: np.ndarray, data: st.DataObject) -> None:
    _count()
    rows = data.draw(st.sets(st.integers(0, counts.shape[0] - 1), min_size=1), label="empty rows")
    counts = counts.copy()
    counts[sorted(rows)] = 0
    adata = make_adata(
        counts, storage=data.draw(st.sampled_from(STORAGES)), dtype=data.draw(st.sampled_from(DTYPES))
    )
    before = snapshot(adata)
    message = (
        re.escape(f"{len(rows)} cells have zero total counts (e.g. 'cell{min(rows)}')") + r".*filter_cells"
    )
    refused(lambda: scamort.Model(adata, **SMALL), message)
    assert_unchanged(adata, before)


@fuzz(15)
@given(counts=count_matrices(min_cells=2), data=st.data())
def test_cells_with_only_explicitly_stored_zeros_are_empty_too(
    counts: np.ndarray, data: st.DataObject
) -> None:
    """A CSR row whose stored entries are all 0 (e.g. after ``X.data[X.data < 1] = 0`` without
    ``eliminate_zeros()``) is an empty cell and must be refused like one."""
    _count()
    row = data.draw(st.integers(0, counts.shape[0] - 1), label="row")
    matrix = sp.csr_matrix(counts.astype(np.float32))
    matrix.data[matrix.indptr[row] : matrix.indptr[row + 1]] = 0  # stored, explicit zeros
    adata = make_adata(counts)
    adata.X = matrix
    before = snapshot(adata)
    refused(
        lambda: scamort.Model(adata, **SMALL),
        re.escape(f"1 cells have zero total counts (e.g. 'cell{row}')"),
    )
    assert_unchanged(adata, before)


@st.composite
def counts_with_empty_genes(draw: st.DrawFn) -> tuple[np.ndarray, list[int]]:
    counts = draw(count_matrices(min_genes=2))
    empty = sorted(
        draw(st.sets(st.integers(0, counts.shape[1] - 1), min_size=1, max_size=counts.shape[1] - 1))
    )
    counts = counts.copy()
    counts[:, empty] = 0
    kept = np.setdiff1d(np.arange(counts.shape[1]), empty)
    return ensure_cells_nonempty(counts, kept), empty


@fuzz(20)
@given(case=counts_with_empty_genes(), storage=st.sampled_from(STORAGES))
def test_empty_genes_are_accepted(case: tuple[np.ndarray, list[int]], storage: str) -> None:
    """All-zero genes are fine (a NB with a tiny mean); the model keeps every gene in place."""
    _count()
    counts, empty = case
    adata = make_adata(counts, storage=storage)
    before = snapshot(adata)
    model = scamort.Model(adata, **SMALL)
    assert model.registry.modalities[0].feature_names == tuple(adata.var_names)
    np.testing.assert_array_equal(encoded(model)["rna.counts"][:, empty], 0)
    assert_unchanged(adata, before)


@fuzz(2)
@given(case=counts_with_empty_genes())
def test_empty_genes_train_to_finite_latents(case: tuple[np.ndarray, list[int]]) -> None:
    _count()
    adata = make_adata(case[0])
    before = snapshot(adata)
    model = scamort.Model(adata, **SMALL)
    history = model.train(**ONE_EPOCH, train_size=1.0)
    assert np.isfinite(history["train_loss"]).all()
    assert np.isfinite(model.get_latent_representation()).all()
    assert_unchanged(adata, before)


# ============================================================================ 3. shapes: one / zero
@fuzz(8)
@given(counts=count_matrices(min_cells=1, max_cells=1))
def test_one_cell_is_accepted_and_trains_without_a_validation_split(counts: np.ndarray) -> None:
    _count()
    adata = make_adata(counts)
    before = snapshot(adata)
    model = scamort.Model(adata, **SMALL)
    refused(lambda: model.train(**ONE_EPOCH), r"train_size=0\.9 leaves no validation cell out of 1")
    if EXAMPLES["test_one_cell_is_accepted_and_trains_without_a_validation_split"] <= 2:
        model.train(**ONE_EPOCH, train_size=1.0)
        assert model.get_latent_representation().shape == (1, 2)
    assert_unchanged(adata, before)


@fuzz(8)
@given(counts=count_matrices(min_cells=3, max_genes=1), storage=st.sampled_from(STORAGES))
def test_one_gene_is_accepted(counts: np.ndarray, storage: str) -> None:
    _count()
    adata = make_adata(counts, storage=storage)
    before = snapshot(adata)
    model = scamort.Model(adata, **SMALL)
    if EXAMPLES["test_one_gene_is_accepted"] <= 2:
        model.train(**ONE_EPOCH, train_size=1.0)
        assert np.isfinite(model.get_latent_representation()).all()
    assert_unchanged(adata, before)


@fuzz(12)
@given(counts=count_matrices(), axis=st.sampled_from(["cells", "genes"]), layer=st.booleans())
def test_zero_cells_or_zero_genes_are_refused(counts: np.ndarray, axis: str, layer: bool) -> None:
    _count()
    adata = make_adata(counts, layer=layer)
    adata = adata[:0].copy() if axis == "cells" else adata[:, :0].copy()
    before = snapshot(adata)
    source = "adata.layers['counts']" if layer else "adata.X"
    shape = f"0 cells × {counts.shape[1]}" if axis == "cells" else f"{counts.shape[0]} cells × 0"
    refused(
        lambda: scamort.Model(adata, layer="counts" if layer else None, **SMALL),
        re.escape(f"{source} is empty ({shape} features); nothing to model."),
    )
    assert_unchanged(adata, before)


def test_missing_x_is_refused_with_the_layer_hint() -> None:
    counts = np.array([[1.0, 0.0], [0.0, 2.0]])
    adata = ad.AnnData(obs=pd.DataFrame(index=cell_names(2)), var=pd.DataFrame(index=gene_names(2)))
    adata.layers["counts"] = sp.csr_matrix(counts)
    before = snapshot(adata)
    refused(lambda: scamort.Model(adata, **SMALL), r"adata\.X is empty; pass the count layer with layer=")
    assert_unchanged(adata, before)
    scamort.Model(adata, layer="counts", **SMALL)
    assert_unchanged(adata, before)


# ============================================================================ 4. names
@fuzz(20)
@given(counts=count_matrices(min_genes=2), data=st.data())
def test_duplicated_gene_names_are_refused(counts: np.ndarray, data: st.DataObject) -> None:
    _count()
    first, second = sorted(data.draw(st.sets(st.integers(0, counts.shape[1] - 1), min_size=2, max_size=2)))
    names = gene_names(counts.shape[1])
    names[second] = names[first]
    adata = make_adata(counts, storage=data.draw(st.sampled_from(STORAGES)))
    adata.var_names = names
    before = snapshot(adata)
    refused(
        lambda: scamort.Model(adata, **SMALL),
        r"Modality 'rna' has duplicated feature names; make them unique first .*var_names_make_unique",
    )
    assert_unchanged(adata, before)


@fuzz(6)
@given(counts=count_matrices(), data=st.data())
def test_duplicated_protein_names_are_refused(counts: np.ndarray, data: st.DataObject) -> None:
    _count()
    adata = make_adata(counts, protein=np.ones((counts.shape[0], 3)))
    columns = ["p0", "p1", "p2"]
    columns[data.draw(st.integers(1, 2))] = "p0"
    adata.obsm["protein"].columns = columns
    before = snapshot(adata)
    refused(
        lambda: scamort.Model(
            adata,
            modalities={"rna": scamort.Modality(), "prot": scamort.Modality(obsm_key="protein")},
            **SMALL,
        ),
        r"Modality 'prot' has duplicated feature names",
    )
    assert_unchanged(adata, before)


@fuzz(10)
@given(counts=count_matrices(), data=st.data())
def test_duplicated_cell_names_are_accepted_in_an_anndata(counts: np.ndarray, data: st.DataObject) -> None:
    """An AnnData is read by position (as scanpy does), so repeated obs names are harmless: the model is
    built, encodes the same tensors as with unique names and embeds every cell (one row per position)."""
    _count()
    names = cell_names(counts.shape[0])
    for i in data.draw(st.sets(st.integers(1, counts.shape[0] - 1), min_size=1)):
        names[i] = names[data.draw(st.integers(0, i - 1))]
    adata = make_adata(counts)
    adata.obs_names = names
    before = snapshot(adata)
    model = scamort.Model(adata, batch_key="batch", **SMALL)
    assert_same_encoding(model, scamort.Model(make_adata(counts), batch_key="batch", **SMALL))
    assert model.get_latent_representation().shape == (counts.shape[0], 2)
    assert_unchanged(adata, before)


# ============================================================================ 5. obs columns
ROLES = {  # role -> (Model keyword, obs column, how the message names it)
    "batch": ("batch_key", "batch", "batch_key"),
    "labels": ("labels_key", "label", "labels_key"),
    "categorical": ("categorical_covariate_keys", "cond", "Categorical covariate"),
}


def role_kwargs(role: str, key: str) -> dict[str, Any]:
    keyword = ROLES[role][0] if role in ROLES else "continuous_covariate_keys"
    return {keyword: [key] if keyword.endswith("keys") else key}


@fuzz(40)
@given(counts=count_matrices(), data=st.data())
def test_categorical_columns_with_missing_values_are_refused(counts: np.ndarray, data: st.DataObject) -> None:
    """NaN / None / pd.NA in a batch or categorical-covariate column of any dtype (in a labels column
    they mark unlabelled cells: see the next test)."""
    _count()
    role = data.draw(st.sampled_from(sorted(set(ROLES) - {"labels"})), label="role")
    _, key, name = ROLES[role]
    kind = data.draw(st.sampled_from(["category", "object", "string"]), label="dtype")
    marker = data.draw(st.sampled_from([np.nan, None, pd.NA]), label="missing marker")
    missing = data.draw(st.sets(st.integers(0, counts.shape[0] - 1), min_size=1), label="missing rows")
    adata = make_adata(counts)
    values = [None if i in missing else f"v{i % 2}" for i in range(counts.shape[0])]
    values = [marker if v is None else v for v in values]
    adata.obs[key] = pd.Series(values, index=adata.obs_names, dtype=kind if kind != "object" else object)
    before = snapshot(adata)
    refused(
        lambda: scamort.Model(adata, **role_kwargs(role, key), **SMALL),
        re.escape(f"{name} {key!r} has {len(missing)} missing (NaN) values; fill them"),
    )
    assert_unchanged(adata, before)


@fuzz(30)
@given(counts=count_matrices(), data=st.data())
def test_missing_labels_are_unlabelled_cells(counts: np.ndarray, data: st.DataObject) -> None:
    """NaN / None / pd.NA in a labels column of any dtype: those cells are unlabelled (code -1) and the
    categories are the other cells' labels; a column of missing values only is refused."""
    _count()
    kind = data.draw(st.sampled_from(["category", "object", "string"]), label="dtype")
    marker = data.draw(st.sampled_from([np.nan, None, pd.NA]), label="missing marker")
    missing = data.draw(st.sets(st.integers(0, counts.shape[0] - 1), min_size=1), label="missing rows")
    adata = make_adata(counts)
    values = [marker if i in missing else f"v{i % 2}" for i in range(counts.shape[0])]
    adata.obs["label"] = pd.Series(values, index=adata.obs_names, dtype=kind if kind != "object" else object)
    before = snapshot(adata)
    if len(missing) == counts.shape[0]:
        refused(
            lambda: scamort.Model(adata, labels_key="label", **SMALL),
            "labels_key 'label' has no label at all",
        )
    else:
        model = scamort.Model(adata, labels_key="label", **SMALL)
        kept = sorted({f"v{i % 2}" for i in range(counts.shape[0]) if i not in missing})
        assert model.registry.label_categories == tuple(kept)
        codes = model._data.labels.numpy()
        expected = [-1 if i in missing else kept.index(f"v{i % 2}") for i in range(counts.shape[0])]
        assert codes.tolist() == expected
    assert_unchanged(adata, before)


@fuzz(30)
@given(
    counts=count_matrices(),
    role=st.sampled_from([*sorted(ROLES), "continuous"]),
    key=st.text(string.ascii_letters + string.digits + "_ -", min_size=1, max_size=10),
)
def test_obs_keys_that_do_not_exist_are_refused_listing_the_columns(
    counts: np.ndarray, role: str, key: str
) -> None:
    _count()
    adata = make_adata(counts)
    if key in adata.obs.columns:
        key = key + "_missing"
    name = ROLES[role][2] if role in ROLES else "Continuous covariate"
    before = snapshot(adata)
    refused(
        lambda: scamort.Model(adata, **role_kwargs(role, key), **SMALL),
        re.escape(
            f"{name} {key!r} is not a column of adata.obs (available: 'batch', 'label', 'cond', 'score')"
        ),
    )
    assert_unchanged(adata, before)


@fuzz(30)
@given(counts=count_matrices(), data=st.data())
def test_bad_continuous_covariates_are_refused(counts: np.ndarray, data: st.DataObject) -> None:
    """Non-numeric text, or NaN / ±inf / pd.NA values, in a continuous covariate."""
    _count()
    kind = data.draw(st.sampled_from(["text", "nan", "+inf", "-inf", "NA"]), label="defect")
    adata = make_adata(counts)
    if kind == "text":
        words = st.text(string.ascii_letters, min_size=1, max_size=5).filter(lambda w: not _is_float(w))
        adata.obs["cov"] = pd.Series(
            data.draw(st.lists(words, min_size=counts.shape[0], max_size=counts.shape[0])),
            index=adata.obs_names,
            dtype=data.draw(st.sampled_from([object, "category"])),
        )
        message = r"Continuous covariate 'cov' must be numeric; it has dtype"
    else:
        bad = data.draw(st.sets(st.integers(0, counts.shape[0] - 1), min_size=1), label="bad rows")
        column = pd.Series(np.linspace(0, 1, counts.shape[0]), index=adata.obs_names)
        if kind == "NA":
            column = column.astype("Float64")
        column.iloc[sorted(bad)] = pd.NA if kind == "NA" else NONFINITE.get(kind, np.nan)
        adata.obs["cov"] = column
        message = re.escape(f"Continuous covariate 'cov' has {len(bad)} NaN or infinite values")
    before = snapshot(adata)
    refused(lambda: scamort.Model(adata, continuous_covariate_keys=["cov"], **SMALL), message)
    assert_unchanged(adata, before)


@fuzz(10)
@given(counts=count_matrices(), data=st.data())
def test_present_key_must_be_an_existing_boolean_column(counts: np.ndarray, data: st.DataObject) -> None:
    _count()
    kind = data.draw(st.sampled_from(["missing", "int", "object", "with NaN"]), label="defect")
    adata = make_adata(counts, protein=np.ones((counts.shape[0], 2)))
    n = counts.shape[0]
    if kind != "missing":
        adata.obs["has_prot"] = {
            "int": np.ones(n, dtype=int),
            "object": pd.Series(["yes"] * n, index=adata.obs_names, dtype=object),
            "with NaN": pd.Series([True] * (n - 1) + [None], index=adata.obs_names, dtype=object),
        }[kind]
    message = (
        r"present_key 'has_prot' is not a column of \.obs"
        if kind == "missing"
        else r"present_key 'has_prot' must be a boolean column without missing values"
    )
    before = snapshot(adata)
    spec = {"rna": scamort.Modality(), "prot": scamort.Modality(obsm_key="protein", present_key="has_prot")}
    refused(lambda: scamort.Model(adata, modalities=spec, **SMALL), message)
    assert_unchanged(adata, before)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ============================================================================ 6. layers and obsm keys
KEYS = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=10)


@fuzz(15)
@given(counts=count_matrices(), name=KEYS, where=st.sampled_from(["layer", "obsm"]))
def test_layers_and_obsm_keys_that_do_not_exist_are_refused(
    counts: np.ndarray, name: str, where: str
) -> None:
    _count()
    adata = make_adata(counts, layer=True)
    name = name if name not in ("counts", "X_pca") else name + "_x"
    if where == "layer":
        kwargs: dict[str, Any] = {"layer": name}
        message = f"Modality 'rna': layer {name!r} not found in adata.layers (available: 'counts')"
    else:
        kwargs = {
            "modalities": {"rna": scamort.Modality(layer="counts"), "prot": scamort.Modality(obsm_key=name)}
        }
        message = f"Modality 'prot': obsm key {name!r} not found (available: 'X_pca')"
    before = snapshot(adata)
    refused(lambda: scamort.Model(adata, **kwargs, **SMALL), re.escape(message))
    assert_unchanged(adata, before)


# ============================================================================ 7. storage and dtype
@fuzz(8)
@given(counts=count_matrices(max_cells=7))
def test_dense_csr_csc_and_every_dtype_give_the_same_model_input(counts: np.ndarray) -> None:
    """Dense / CSR / CSC × int32 / int64 / float32 / float64 (and dense float16), in X or a layer: all
    accepted, all encoded to exactly the same tensors (so training with one seed is identical, see the
    next test)."""
    _count()
    reference = scamort.Model(make_adata(counts), batch_key="batch", **SMALL)
    for storage in STORAGES:
        for dtype in DTYPES:
            for layer in (False, True):
                adata = make_adata(counts, storage=storage, dtype=dtype, layer=layer)
                before = snapshot(adata)
                model = scamort.Model(adata, layer="counts" if layer else None, batch_key="batch", **SMALL)
                assert_same_encoding(model, reference)
                assert_unchanged(adata, before)
    adata = make_adata(counts, storage="dense", dtype="float16")  # exact for counts < 2048; dense only
    before = snapshot(adata)
    assert_same_encoding(scamort.Model(adata, batch_key="batch", **SMALL), reference)
    assert_unchanged(adata, before)


def _backed(adata: ad.AnnData, path: Path) -> ad.AnnData:
    adata.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


def test_storage_dtype_and_backed_variants_train_to_identical_latents(tmp_path: Path) -> None:
    """Same counts, same seed: dense, CSR, CSC, each dtype and backed ('r' mode) files of each storage give
    bit-identical latents after one epoch; backed files are not modified."""
    rng = np.random.default_rng(5)
    counts = ensure_cells_nonempty(rng.poisson(2.0, size=(24, 6)).astype(np.float64))
    variants: dict[str, ad.AnnData] = {
        f"{storage}-{dtype}": make_adata(counts, storage=storage, dtype=dtype)
        for storage, dtype in [
            ("csr", "float32"),
            ("csc", "float32"),
            ("dense", "float32"),
            ("csr", "int32"),
            ("dense", "int64"),
            ("csc", "float64"),
        ]
    }
    for storage in STORAGES:
        variants[f"backed-{storage}"] = _backed(
            make_adata(counts, storage=storage), tmp_path / f"{storage}.h5ad"
        )
    latents = {}
    for name, adata in variants.items():
        before = snapshot(adata)
        model = scamort.Model(adata, batch_key="batch", seed=3, **SMALL)
        model.train(**ONE_EPOCH)
        latents[name] = model.get_latent_representation()
        assert_unchanged(adata, before)
    for name, latent in latents.items():
        np.testing.assert_array_equal(latent, latents["csr-float32"], err_msg=name)
    for adata in variants.values():
        if adata.isbacked:
            adata.file.close()


@fuzz(15)
@given(counts=count_matrices(), data=st.data())
def test_backed_files_with_defects_are_refused_like_in_memory(
    tmp_path_factory: pytest.TempPathFactory, counts: np.ndarray, data: st.DataObject
) -> None:
    """A backed ('r' mode) .h5ad gets the same specific refusal as the object in memory: bad values,
    empty cells, no cells, Bernoulli without binarize, and counts requested from a layer the file
    lacks (it must name the layer, not complain about the normalised .X)."""
    _count()
    kind = data.draw(
        st.sampled_from(["values", "empty cell", "no cells", "bernoulli", "layer"]), label="defect"
    )
    counts = counts.copy()
    kwargs: dict[str, Any] = {}
    if kind == "values":
        row, col = positions(data.draw, counts.shape, 1, 1)[0]
        counts[row, col] = data.draw(st.sampled_from([np.nan, np.inf, -2.0, 1.5]))
        what, n, location = expected_value_error({(row, col): counts[row, col]}, lambda c: f"gene{c}")
        message = rf"adata\.X( \(backed\))? has {n} {what} entries \(first at {re.escape(location)}\)"
    elif kind == "empty cell":
        row = data.draw(st.integers(0, counts.shape[0] - 1))
        counts[row] = 0
        message = re.escape(f"1 cells have zero total counts (e.g. 'cell{row}')")
    elif kind == "no cells":
        counts = counts[:0]
        message = r"is empty \(0 cells × \d+ features\); nothing to model"
    elif kind == "bernoulli":
        counts[0, 0] = 2
        kwargs["modalities"] = {"atac": scamort.Modality(likelihood="bernoulli")}
        message = r"non-binary \(not 0 or 1\) entries"
    else:
        kwargs["layer"] = "raw"
        message = r"layer 'raw' not found in adata\.layers \(available: 'counts'\)"
    path = tmp_path_factory.mktemp("backed") / "cells.h5ad"
    adata = _backed(
        make_adata(counts, storage=data.draw(st.sampled_from(STORAGES)), layer=kind == "layer"), path
    )
    try:
        before = snapshot(adata)
        with pytest.raises(InputError, match=message) as error:
            scamort.Model(adata, **kwargs, **SMALL)
        assert "non-integer" not in str(error.value) or kind == "values"
        assert_unchanged(adata, before)
    finally:
        adata.file.close()


def test_backed_bernoulli_binarize_trains_like_in_memory(tmp_path: Path) -> None:
    """``binarize=True`` must binarise the counts read from disk too (same latent as in memory)."""
    rng = np.random.default_rng(4)
    counts = ensure_cells_nonempty(rng.poisson(2.0, size=(20, 5)).astype(np.float64))
    spec = {"atac": scamort.Modality(likelihood="bernoulli", binarize=True)}
    latents = []
    for adata in (make_adata(counts), _backed(make_adata(counts), tmp_path / "atac.h5ad")):
        model = scamort.Model(adata, modalities=spec, seed=1, **SMALL)
        model.train(**ONE_EPOCH)
        latents.append(model.get_latent_representation())
    np.testing.assert_array_equal(latents[1], latents[0])


@st.composite
def noncanonical_csr(draw: st.DrawFn) -> tuple[np.ndarray, sp.csr_matrix]:
    """A valid CSR whose column indices are unsorted within rows and may hold duplicate entries (scipy
    sums them): the same matrix as ``counts``, in a non-canonical layout."""
    counts = draw(count_matrices(min_genes=2))
    dtype = draw(st.sampled_from(DTYPES))
    rows, cols = np.nonzero(counts)
    vals = counts[rows, cols]
    order = np.lexsort((-cols, rows))  # descending columns within each row
    rows, cols, vals = rows[order], cols[order], vals[order]
    split = [i for i in range(len(vals)) if vals[i] >= 2]
    if split and draw(st.booleans()):  # split one entry into two duplicates
        i = draw(st.sampled_from(split))
        rows, cols = np.insert(rows, i, rows[i]), np.insert(cols, i, cols[i])
        vals = np.insert(vals, i, 1.0)
        vals[i + 1] -= 1.0
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=counts.shape[0]))]
    matrix = sp.csr_matrix(
        (vals.astype(dtype), cols.astype(np.int32), indptr.astype(np.int32)), shape=counts.shape
    )
    assert np.array_equal(matrix.toarray(), counts)
    return counts, matrix


@fuzz(20)
@given(case=noncanonical_csr())
def test_non_canonical_csr_is_read_and_left_exactly_as_it_was(case: tuple[np.ndarray, sp.csr_matrix]) -> None:
    """Unsorted indices / duplicate entries are a valid CSR: accepted, read as the matrix they represent,
    and the user's ``data``/``indices``/``indptr`` arrays are not sorted or summed in place."""
    _count()
    counts, matrix = case
    adata = make_adata(counts)
    adata.X = matrix
    before = snapshot(adata)
    model = scamort.Model(adata, **SMALL)
    np.testing.assert_array_equal(adata.X.toarray(), counts, err_msg="the user's counts were changed")
    assert_unchanged(adata, before)
    assert_same_encoding(model, scamort.Model(make_adata(counts), **SMALL))


@fuzz(10)
@given(counts=count_matrices(), data=st.data())
def test_explicit_zeros_in_nonempty_cells_are_harmless(counts: np.ndarray, data: st.DataObject) -> None:
    """Stored zeros next to real counts change nothing: same tensors as the canonical matrix."""
    _count()
    extra = np.array(data.draw(hnp.arrays(bool, counts.shape)), dtype=bool)
    rows, cols = np.nonzero((counts != 0) | extra)
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=counts.shape[0]))]
    matrix = sp.csr_matrix((counts[rows, cols].astype(np.float32), cols, indptr), shape=counts.shape)
    adata = make_adata(counts)
    adata.X = matrix
    before = snapshot(adata)
    model = scamort.Model(adata, **SMALL)
    assert_same_encoding(model, scamort.Model(make_adata(counts), **SMALL))
    assert_unchanged(adata, before)


# ============================================================================ 8. views and bernoulli
@fuzz(15)
@given(counts=count_matrices(min_cells=3), data=st.data())
def test_an_anndata_view_is_accepted_and_stays_an_unmodified_view(
    counts: np.ndarray, data: st.DataObject
) -> None:
    """``Model(adata[idx])`` (cells in any order, repeated, or a boolean mask; genes subset too) reads the
    view exactly like its copy and neither the view nor its parent is modified (nor made actual)."""
    _count()
    parent = make_adata(counts, storage=data.draw(st.sampled_from(STORAGES)))
    n = counts.shape[0]
    if data.draw(st.booleans(), label="boolean mask"):
        mask = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        mask[data.draw(st.integers(0, n - 1))] = True
        index: Any = mask
    else:
        index = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=2 * n), label="cells")
    genes = slice(None)
    if counts.shape[1] > 1 and data.draw(st.booleans(), label="genes subset"):
        keep = data.draw(st.sets(st.integers(0, counts.shape[1] - 1), min_size=1), label="genes")
        genes = sorted(keep)
    view = parent[index, genes]
    copy_ = view.copy()
    assume(np.asarray(copy_.X.sum(axis=1)).ravel().min() > 0)  # no selected cell lost all its counts
    parent_before, view_before = snapshot(parent), snapshot(view)
    model = scamort.Model(view, batch_key="batch", **SMALL)
    assert view.is_view
    assert_unchanged(view, view_before)
    assert_unchanged(parent, parent_before)
    assert_same_encoding(model, scamort.Model(copy_, batch_key="batch", **SMALL))


def test_a_view_trains_and_embeds_without_being_modified() -> None:
    rng = np.random.default_rng(2)
    parent = make_adata(ensure_cells_nonempty(rng.poisson(2.0, size=(30, 5)).astype(float)))
    view = parent[rng.permutation(30)[:20]]
    parent_before, view_before = snapshot(parent), snapshot(view)
    model = scamort.Model(view, **SMALL)
    model.train(**ONE_EPOCH)
    latent = model.get_latent_representation()
    np.testing.assert_array_equal(latent, model.get_latent_representation(view.copy()))
    assert view.is_view
    assert_unchanged(view, view_before)
    assert_unchanged(parent, parent_before)


@fuzz(20)
@given(counts=count_matrices(), data=st.data())
def test_bernoulli_needs_binary_values_or_binarize(counts: np.ndarray, data: st.DataObject) -> None:
    _count()
    counts = counts.copy()
    row, col = positions(data.draw, counts.shape, 1, 1)[0]
    counts[row, col] = max(counts[row, col], 2.0)  # at least one count above 1
    adata = make_adata(counts, storage=data.draw(st.sampled_from(STORAGES)))
    before = snapshot(adata)
    first = sorted(zip(*np.nonzero(counts > 1), strict=True))[0]
    message = re.escape(
        f"adata.X has {int((counts > 1).sum())} non-binary (not 0 or 1) entries "
        f"(first at cell 'cell{first[0]}', feature 'gene{first[1]}'): use binarize=True"
    )
    bernoulli = {"atac": scamort.Modality(likelihood="bernoulli")}
    refused(lambda: scamort.Model(adata, modalities=bernoulli, **SMALL), message)
    model = scamort.Model(
        adata, modalities={"atac": scamort.Modality(likelihood="bernoulli", binarize=True)}, **SMALL
    )
    np.testing.assert_array_equal(encoded(model)["atac.counts"], (counts > 0).astype(np.float32))
    binary = make_adata((counts > 0).astype(float))
    assert_same_encoding(scamort.Model(binary, modalities=bernoulli, **SMALL), model)
    assert_unchanged(adata, before)


# ============================================================================ 9. MuData
def make_mudata(
    members: dict[str, list[int]], n_features: dict[str, int], seed: int = 0, names: list[str] | None = None
) -> md.MuData:
    """A MuData whose modality ``name`` holds the cells ``members[name]`` (unpaired layout); cell ``c``
    is called ``names[c]`` (default ``f"cell{c}"``)."""
    rng = np.random.default_rng(seed)
    mods = {}
    for name, cells in members.items():
        counts = ensure_cells_nonempty(rng.poisson(2.0, size=(len(cells), n_features[name])).astype(float))
        mod = ad.AnnData(
            X=sp.csr_matrix(counts.astype(np.float32)),
            obs=pd.DataFrame(
                {"batch": [f"b{c % 2}" for c in cells]},
                index=[f"cell{c}" if names is None else names[c] for c in cells],
            ),
            var=pd.DataFrame(index=[f"{name}_{j}" for j in range(n_features[name])]),
        )
        mods[name] = mod
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.MuData(mods)


@st.composite
def mudata_memberships(draw: st.DrawFn) -> dict[str, list[int]]:
    """Which of n cells each of rna / prot / other holds (each modality non-empty)."""
    n = draw(st.integers(3, 9))
    subsets = [("rna",), ("prot",), ("other",), ("rna", "prot"), ("rna", "other"), ("prot", "other")]
    subsets.append(("rna", "prot", "other"))
    membership = draw(st.lists(st.sampled_from(subsets), min_size=n, max_size=n))
    members = {name: [i for i, m in enumerate(membership) if name in m] for name in ("rna", "prot", "other")}
    for name, cells in members.items():
        if not cells:
            members[name] = [0]
    return members


RNA_PROT = {"rna": scamort.Modality(), "prot": scamort.Modality()}
N_FEATURES = {"rna": 4, "prot": 3, "other": 2}


@fuzz(20)
@given(members=mudata_memberships())
def test_mudata_cells_missing_every_modelled_modality_are_refused(members: dict[str, list[int]]) -> None:
    """Modelling rna + prot: cells only in the third modality are named and refused; otherwise each
    modality's presence mask is exactly its membership."""
    _count()
    mdata = make_mudata(members, N_FEATURES)
    before = snapshot_mudata(mdata)
    in_model = {f"cell{c}" for c in members["rna"] + members["prot"]}
    missing = [c for c in mdata.obs_names if c not in in_model]
    if missing:
        message = re.escape(
            f"{len(missing)} cells (e.g. {missing[0]!r}) are missing every modality; drop them."
        )
        refused(lambda: scamort.Model(mdata, modalities=RNA_PROT, **SMALL), message)
    else:
        model = scamort.Model(mdata, modalities=RNA_PROT, **SMALL)
        for name in RNA_PROT:
            expected = np.isin(mdata.obs_names, [f"cell{c}" for c in members[name]])
            np.testing.assert_array_equal(encoded(model)[f"{name}.present"], expected)
    assert_mudata_unchanged(mdata, before)


@fuzz(10)
@given(members=mudata_memberships(), name=KEYS)
def test_mudata_modality_names_that_do_not_exist_are_refused(
    members: dict[str, list[int]], name: str
) -> None:
    _count()
    mdata = make_mudata(members, N_FEATURES)
    name = name if name not in mdata.mod else name + "_x"
    before = snapshot_mudata(mdata)
    refused(
        lambda: scamort.Model(
            mdata, modalities={"rna": scamort.Modality(), name: scamort.Modality()}, **SMALL
        ),
        re.escape(f"Modality {name!r} is not in the MuData (it has rna, prot, other)."),
    )
    refused(lambda: scamort.Model(mdata, **SMALL), r"For a MuData pass modalities=")
    assert_mudata_unchanged(mdata, before)


@fuzz(10)
@given(data=st.data())
def test_mudata_bad_counts_name_the_modality(data: st.DataObject) -> None:
    """A defect inside one modality of a MuData says which modality (``mdata.mod['prot']``)."""
    _count()
    mdata = make_mudata({"rna": list(range(6)), "prot": list(range(6))}, N_FEATURES)
    name = data.draw(st.sampled_from(["rna", "prot"]))
    kind = data.draw(st.sampled_from(["nan", "negative", "non-integer"]))
    row, col = data.draw(st.integers(0, 5)), data.draw(st.integers(0, N_FEATURES[name] - 1))
    dense = mdata.mod[name].X.toarray()
    dense[row, col] = {"nan": np.nan, "negative": -3.0, "non-integer": 1.5}[kind]
    mdata.mod[name].X = sp.csr_matrix(dense)
    what = {"nan": "NaN or infinite", "negative": "negative", "non-integer": "non-integer"}[kind]
    before = snapshot_mudata(mdata)
    refused(
        lambda: scamort.Model(mdata, modalities=RNA_PROT, **SMALL),
        re.escape(f"mdata.mod[{name!r}]") + r".*" + re.escape(f"has 1 {what} entries"),
    )
    assert_mudata_unchanged(mdata, before)


@fuzz(5)
@given(n=st.integers(2, 6), data=st.data())
def test_mudata_with_duplicated_cell_names_is_refused_clearly(n: int, data: st.DataObject) -> None:
    """A MuData pairs modalities by cell name, so repeated obs names cannot be aligned: refuse them."""
    _count()
    names = [f"cell{i}" for i in range(n)]
    names[data.draw(st.integers(1, n - 1))] = "cell0"
    mdata = make_mudata({"rna": list(range(n)), "prot": list(range(n))}, N_FEATURES, names=names)
    before = snapshot_mudata(mdata)
    refused(lambda: scamort.Model(mdata, modalities=RNA_PROT, **SMALL), r"duplicated cell names|not unique")
    assert_mudata_unchanged(mdata, before)


def test_mudata_is_accepted_trained_and_left_unchanged() -> None:
    mdata = make_mudata({"rna": list(range(0, 16)), "prot": list(range(6, 20))}, N_FEATURES)
    mdata.obs["sample"] = pd.Categorical([f"s{i % 2}" for i in range(mdata.n_obs)])
    before = snapshot_mudata(mdata)
    model = scamort.Model(mdata, modalities=RNA_PROT, batch_key="sample", **SMALL)
    model.train(**ONE_EPOCH)
    assert np.isfinite(model.get_latent_representation()).all()
    assert_mudata_unchanged(mdata, before)


# ============================================================================ 10. query and load time
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[scamort.Model, Path, np.ndarray]:
    """A model of 6 genes with batch, a categorical and a continuous covariate, saved to disk."""
    rng = np.random.default_rng(11)
    counts = ensure_cells_nonempty(rng.poisson(2.0, size=(40, 6)).astype(np.float64))
    adata = make_adata(counts, layer=True)
    model = scamort.Model(
        adata,
        layer="counts",
        batch_key="batch",
        categorical_covariate_keys=["cond"],
        continuous_covariate_keys=["score"],
        **SMALL,
    )
    model.train(**ONE_EPOCH)
    path = tmp_path_factory.mktemp("saved") / "model"
    model.save(path)
    return model, path, counts


query_counts = count_matrices(min_cells=2, max_cells=6, min_genes=6, max_genes=6)


@fuzz(20)
@given(counts=query_counts, data=st.data())
def test_unseen_categories_at_query_time_are_refused(
    trained, counts: np.ndarray, data: st.DataObject
) -> None:
    _count()
    model = trained[0]
    key, name, known = data.draw(
        st.sampled_from(
            [("batch", "batch_key", "'b0', 'b1'"), ("cond", "Categorical covariate", "'c0', 'c1'")]
        )
    )
    new = data.draw(st.text(string.ascii_letters + string.digits + " _", min_size=1, max_size=8))
    new = new if new not in ("b0", "b1", "c0", "c1") else new + "_new"
    query = make_adata(counts, layer=True)
    rows = data.draw(st.sets(st.integers(0, counts.shape[0] - 1), min_size=1))
    column = query.obs[key].astype(str).to_numpy(dtype=object)
    column[sorted(rows)] = new
    query.obs[key] = pd.Categorical(column) if data.draw(st.booleans()) else column
    before = snapshot(query)
    message = (
        f"{name} {key!r} has categories the model was not trained on ({new!r}); the model knows {known}."
    )
    refused(lambda: model.get_latent_representation(query), re.escape(message))
    assert_unchanged(query, before)


@fuzz(15)
@given(counts=query_counts, data=st.data())
def test_query_defects_are_refused(trained, counts: np.ndarray, data: st.DataObject) -> None:
    """At query time: missing layer, missing batch column, NaN batch, bad counts, empty cells, no cells."""
    _count()
    model = trained[0]
    kind = data.draw(
        st.sampled_from(["layer", "batch column", "batch NaN", "NaN count", "empty cell", "0 cells"])
    )
    query = make_adata(counts, layer=True)
    if kind == "layer":
        del query.layers["counts"]
        message = r"Modality 'rna': layer 'counts' not found in adata.layers \(available: none\)"
    elif kind == "batch column":
        del query.obs["batch"]
        message = r"batch_key 'batch' is not a column of adata.obs"
    elif kind == "batch NaN":
        batch = query.obs["batch"].astype(object)
        batch.iloc[0] = np.nan
        query.obs["batch"] = batch
        message = r"batch_key 'batch' has 1 missing \(NaN\) values"
    elif kind == "NaN count":
        bad = counts.copy()
        bad[-1, 0] = np.nan
        query = make_adata(bad, layer=True)
        message = re.escape(
            f"adata.layers['counts'] has 1 NaN or infinite entries (first at cell 'cell{len(bad) - 1}'"
        )
    elif kind == "empty cell":
        empty = counts.copy()
        empty[1] = 0
        query = make_adata(empty, layer=True)
        message = r"1 cells have zero total counts \(e\.g\. 'cell1'\)"
    else:
        query = query[:0].copy()
        message = r"adata.layers\['counts'\] is empty \(0 cells × 6 features\)"
    before = snapshot(query)
    refused(lambda: model.get_latent_representation(query), message)
    assert_unchanged(query, before)


@fuzz(15)
@given(counts=query_counts, drop=st.sets(st.integers(0, 5), min_size=1, max_size=5))
def test_query_with_a_subset_of_the_genes_is_refused(trained, counts: np.ndarray, drop: set[int]) -> None:
    _count()
    model = trained[0]
    query = make_adata(counts, layer=True)
    query = query[:, [g for g in range(6) if g not in drop]].copy()
    before = snapshot(query)
    missing = ", ".join(repr(f"gene{g}") for g in sorted(drop)[:3])
    message = (
        f"adata.layers['counts'] lacks {len(drop)} of the model's 6 features (e.g. {missing}); subset or"
    )
    refused(lambda: model.get_latent_representation(query), re.escape(message))
    assert_unchanged(query, before)


@fuzz(10)
@given(counts=query_counts, data=st.data())
def test_query_genes_are_aligned_by_name_and_cells_by_position(
    trained, counts: np.ndarray, data: st.DataObject
) -> None:
    """Genes reordered and/or extra genes added: aligned by name, identical latents; cells permuted: the
    latent rows follow the cells."""
    _count()
    model = trained[0]
    query = make_adata(counts, layer=True)
    reference = model.get_latent_representation(query)
    order = data.draw(st.permutations(range(6)), label="gene order")
    n_extra = data.draw(st.integers(0, 3), label="extra genes")
    rng = np.random.default_rng(0)
    extra = ad.AnnData(
        X=np.zeros((counts.shape[0], n_extra), np.float32),
        obs=pd.DataFrame(index=query.obs_names),
        var=pd.DataFrame(index=[f"extra{k}" for k in range(n_extra)]),
    )
    extra.layers["counts"] = sp.csr_matrix(
        rng.poisson(3.0, size=(counts.shape[0], n_extra)).astype(np.float32)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wider = ad.concat([query[:, list(order)], extra], axis=1)
    wider.obs = query.obs.copy()
    cells = data.draw(st.permutations(range(counts.shape[0])), label="cell order")
    wider = wider[list(cells)].copy()
    wider.obsm["X_pca"] = np.ones((wider.n_obs, 2))
    before = snapshot(wider)
    np.testing.assert_allclose(
        model.get_latent_representation(wider), reference[list(cells)], rtol=0, atol=1e-6
    )
    assert_unchanged(wider, before)


@fuzz(10)
@given(counts=query_counts, data=st.data())
def test_query_with_duplicated_gene_names_is_refused_clearly(
    trained, counts: np.ndarray, data: st.DataObject
) -> None:
    """A query whose genes repeat a model gene's name cannot be aligned by name: a clear InputError."""
    _count()
    model = trained[0]
    query = make_adata(counts, layer=True)
    names = gene_names(6)
    first, second = sorted(data.draw(st.sets(st.integers(0, 5), min_size=2, max_size=2)))
    names[second] = names[first]
    query.var_names = names
    before = snapshot(query)
    refused(lambda: model.get_latent_representation(query), r"duplicated feature names")
    assert_unchanged(query, before)


@fuzz(8)
@given(counts=query_counts, gene=st.integers(0, 5), new=KEYS)
def test_loading_onto_data_with_a_renamed_gene_is_refused(
    trained, counts: np.ndarray, gene: int, new: str
) -> None:
    _count()
    path = trained[1]
    new = new if not re.fullmatch(r"gene\d", new) else new + "_renamed"
    adata = make_adata(counts, layer=True)
    names = gene_names(6)
    names[gene] = new
    adata.var_names = names
    before = snapshot(adata)
    message = f"adata.layers['counts'] lacks 1 of the model's 6 features (e.g. 'gene{gene}')"
    refused(lambda: scamort.Model.load(path, adata, device="cpu"), re.escape(message))
    assert_unchanged(adata, before)


@fuzz(5)
@given(counts=query_counts, order=st.permutations(range(6)))
def test_loading_onto_reordered_genes_aligns_them(trained, counts: np.ndarray, order: list[int]) -> None:
    _count()
    model, path, _ = trained
    adata = make_adata(counts, layer=True)
    reordered = adata[:, list(order)].copy()
    before = snapshot(reordered)
    loaded = scamort.Model.load(path, reordered, device="cpu")
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation(adata))
    assert_unchanged(reordered, before)


# ============================================================================ 11. objects and options
@fuzz(10)
@given(
    thing=st.sampled_from(
        [
            np.ones((3, 2)),
            pd.DataFrame(np.ones((3, 2))),
            sp.csr_matrix(np.ones((3, 2))),
            None,
            {"X": np.ones((3, 2))},
            "cells.h5ad",
        ]
    )
)
def test_objects_that_are_not_anndata_are_refused(trained, thing: Any) -> None:
    _count()
    name = type(thing).__name__
    refused(lambda: scamort.Model(thing), re.escape(f"Model expects an AnnData or MuData, got {name}."))
    if thing is not None:  # None means "the training data" for queries
        refused(lambda: trained[0].get_latent_representation(thing), re.escape(f"got {name}."))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: scamort.Modality(likelihood="gaussian"), r"Unknown likelihood 'gaussian'; choose one of"),
        (
            lambda: scamort.Modality(layer="counts", obsm_key="protein"),
            r"either layer= or obsm_key=, not both",
        ),
        (lambda: scamort.Model(_tiny(), modalities={}), r"modalities is empty"),
        (
            lambda: scamort.Model(_tiny(), modalities={"rna": "counts"}),
            r"modalities\['rna'\] must be a scamort\.Modality",
        ),
        (
            lambda: scamort.Model(_tiny(), layer="counts", modalities={"rna": scamort.Modality()}),
            r"With modalities=\.\.\., give each modality's layer and likelihood in its scamort\.Modality",
        ),
        (
            lambda: scamort.Model(_tiny(), likelihood="zinb", modalities={"rna": scamort.Modality()}),
            r"With modalities=\.\.\., give each modality's layer and likelihood in its scamort\.Modality",
        ),
    ],
)
def test_bad_modality_specs_are_refused(make: Callable[[], Any], message: str) -> None:
    refused(make, message)


def _tiny() -> ad.AnnData:
    return make_adata(np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]]))
