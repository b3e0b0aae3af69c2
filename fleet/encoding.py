"""The tabular models' input encoding, a scikit-learn transformer kept in the pipeline.

It lives in the pipeline (not in serving code) so that a logged model takes raw feature
records everywhere: in our services, in ``mlflow models serve`` and in notebooks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin


class FrameEncoder(TransformerMixin, BaseEstimator):
    """Feature frame -> float matrix: categorical columns first, as codes, then numbers.

    Codes follow the catalog's category order, so one code means one value in every
    version; a value outside it (or missing) becomes NaN, which the booster treats as
    missing. A column without catalog categories learns them at fit (sorted).
    """

    def __init__(
        self, categorical: dict[str, tuple[str, ...] | None], numeric: tuple[str, ...]
    ) -> None:
        self.categorical = categorical
        self.numeric = numeric

    def fit(self, X: object, y: object = None) -> FrameEncoder:
        frame = pd.DataFrame(X)
        self.categories_ = {
            name: list(cats)
            if cats is not None
            else sorted(str(v) for v in frame[name].dropna().unique())
            for name, cats in self.categorical.items()
        }
        self.codes_ = {
            name: {value: float(i) for i, value in enumerate(cats)}
            for name, cats in self.categories_.items()
        }
        self.n_features_in_ = len(self.categorical) + len(self.numeric)
        return self

    def transform(self, X: object) -> np.ndarray:
        frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(X)
        out = np.empty((len(frame), self.n_features_in_), dtype=float)
        for j, (name, codes) in enumerate(self.codes_.items()):
            out[:, j] = [codes.get(value, np.nan) for value in frame[name].tolist()]
        offset = len(self.codes_)
        for k, name in enumerate(self.numeric):
            out[:, offset + k] = frame[name].to_numpy(dtype=float, na_value=np.nan)
        return out
