"""Real data sets shipped with the package, for examples, tests and benchmarks.

Like :mod:`numpyro.examples.datasets`, but the files are part of the package (no download):
``breast_cancer.csv`` and ``diabetes.csv`` lie beside this module; their sources, licences,
checksums and column meanings are in ``README.md`` in the same folder.

Each loader returns NumPy arrays (float64 features, as stored); convert them with
``jnp.asarray(X, jnp.float32)`` where a model wants JAX arrays. ``standardize=True`` centres
each column and divides it by its (population) standard deviation over all rows; callers that
split the data and standardise with training statistics load the raw values instead.

Example:
    >>> from numpyro_gflow.datasets import load_breast_cancer
    >>> X, y = load_breast_cancer()
    >>> X.shape, y.shape
    ((569, 30), (569,))
"""

from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = [
    "BREAST_CANCER_CLASSES",
    "DIABETES_COLUMNS",
    "load_breast_cancer",
    "load_diabetes",
]

#: class names of the breast-cancer target, in target order (0 = malignant, 1 = benign)
BREAST_CANCER_CLASSES = ("malignant", "benign")
#: the diabetes file's columns: ten baseline variables, then the target
DIABETES_COLUMNS = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "target")


def _read(name: str) -> tuple[list[str], np.ndarray]:
    """(header fields, the numeric table below the header) of a CSV file beside this module."""
    with resources.files(__name__).joinpath(name).open() as f:
        header = f.readline().strip().split(",")
        table = np.loadtxt(f, delimiter=",")
    return header, table


def _standardize(a: np.ndarray) -> np.ndarray:
    return (a - a.mean(axis=0)) / a.std(axis=0)


def load_breast_cancer(standardize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The Wisconsin breast cancer (diagnostic) data: 569 tumours, 30 features, binary target.

    Args:
        standardize: standardise each feature column (mean 0, population sd 1 over all 569
            rows). False gives the raw measurements.

    Returns:
        ``(X, y)``: ``X`` float64 of shape (569, 30); ``y`` int32 of shape (569,), 0 =
        malignant, 1 = benign (:data:`BREAST_CANCER_CLASSES`).
    """
    header, table = _read("breast_cancer.csv")
    # the first line is not column names: n_samples, n_features, then the class names
    n_samples, n_features = int(header[0]), int(header[1])
    assert tuple(header[2:]) == BREAST_CANCER_CLASSES, header
    assert table.shape == (n_samples, n_features + 1), table.shape
    X, y = table[:, :-1], table[:, -1].astype(np.int32)
    return (_standardize(X) if standardize else X), y


def load_diabetes(standardize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The diabetes data of Efron et al. (2004): 442 patients, 10 baseline variables, and a
    quantitative measure of disease progression one year later.

    Args:
        standardize: standardise each feature column and the target (mean 0, population sd 1
            over all 442 rows). False gives the raw values (the target is then a score from 25
            to 346).

    Returns:
        ``(X, y)``: ``X`` float64 of shape (442, 10) (columns :data:`DIABETES_COLUMNS` but the
        last); ``y`` float64 of shape (442,).
    """
    header, table = _read("diabetes.csv")
    assert tuple(header) == DIABETES_COLUMNS, header
    assert table.shape == (442, 11), table.shape
    X, y = table[:, :-1], table[:, -1]
    if standardize:
        return _standardize(X), _standardize(y)
    return X, y
