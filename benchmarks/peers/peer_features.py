"""Features and the per-query cost model shared by tuned_peers.py and ablate.py.

- sparse: TF-IDF of word 1-2-grams and TF-IDF of char_wb 3-5-grams (character
  n-grams inside word boundaries, padded with a space), each min_df=2 and
  sublinear_tf, fitted on the training prompts and put side by side.
- dense: a TruncatedSVD of the sparse features, then log(1 + characters of
  the prompt), standardised (mean 0, variance 1 over the training prompts).
- CostModel: one ridge per expert on log(cost) over the dense features,
  alpha by leave-one-out CV on train; predicted cost = exp(prediction).
"""

import numpy as np
from scipy import sparse
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

WORD_PARAMS = dict(ngram_range=(1, 2), min_df=2, sublinear_tf=True, dtype=np.float32)
CHAR_PARAMS = dict(analyzer="char_wb", ngram_range=(3, 5), min_df=2,
                   sublinear_tf=True, dtype=np.float32)
SVD_DIMS = 256
# Two power iterations instead of scikit-learn's five: the SVD of ~100k
# columns is the slowest step on these shared cores (about a minute).
SVD_ITERATIONS = 2
RIDGE_ALPHAS = np.logspace(-3, 4, 15)


_WORD_ANALYZER = TfidfVectorizer(**WORD_PARAMS).build_analyzer()
_CHAR_ANALYZER = TfidfVectorizer(**CHAR_PARAMS).build_analyzer()


def merged_analyzer(text):
    """Word 1-2-grams and char_wb 3-5-grams of `text`, as one list of terms."""
    return _WORD_ANALYZER(text) + ["\x00" + g for g in _CHAR_ANALYZER(text)]


def log_length(prompts):
    return np.log1p(np.array([len(p) for p in prompts], dtype=float))[:, None]


class Featurizer:
    """TF-IDF (word and/or char) -> optional SVD -> optional log length."""

    def __init__(self, words=True, chars=True, char_analyzer="char_wb",
                 svd_dims=SVD_DIMS, with_length=True, seed=1, merged=False):
        self.vectorizers = []
        if merged:
            # One TF-IDF over word and character n-grams together, one L2
            # norm for both, as torouter's hashed featurizer makes it (where
            # the far more numerous character n-grams carry most of the norm).
            self.vectorizers.append(TfidfVectorizer(
                analyzer=merged_analyzer, min_df=2, sublinear_tf=True, dtype=np.float32))
        elif words:
            self.vectorizers.append(TfidfVectorizer(**WORD_PARAMS))
        if chars and not merged:
            self.vectorizers.append(TfidfVectorizer(**{**CHAR_PARAMS,
                                                       "analyzer": char_analyzer}))
        self.svd = TruncatedSVD(svd_dims, n_iter=SVD_ITERATIONS, random_state=seed)
        self.with_length = with_length
        self.scaler = StandardScaler()

    def sparse_fit(self, prompts):
        return sparse.hstack([v.fit_transform(prompts) for v in self.vectorizers]).tocsr()

    def dense_fit(self, prompts, x):
        """Fits the SVD and scaler on the sparse features x of the prompts."""
        z = self.svd.fit_transform(x)
        self.components_t = np.ascontiguousarray(self.svd.components_.T)
        if self.with_length:
            z = np.hstack([z, log_length(prompts)])
        return self.scaler.fit_transform(z)

    def sparse(self, prompts):
        return sparse.hstack([v.transform(prompts) for v in self.vectorizers]).tocsr()

    def dense(self, prompts, x=None):
        """Dense features; pass the sparse ones if already computed."""
        x = self.sparse(prompts) if x is None else x
        # Not svd.transform: it multiplies by components_.T, a strided view
        # that scipy copies (~100 MB) on every call, 30 ms per query.
        z = x @ self.components_t
        if self.with_length:
            z = np.hstack([z, log_length(prompts)])
        return self.scaler.transform(z)


class CostModel:
    """Per expert, ridge on log(cost) over the dense features (LOO-CV alpha)."""

    def fit(self, z, cost):
        self.models = []
        for j in range(cost.shape[1]):
            has = ~np.isnan(cost[:, j])  # only the rows with an outcome
            model = RidgeCV(alphas=RIDGE_ALPHAS).fit(z[has], np.log(cost[has, j]))
            self.models.append(model)
        self.alphas = [float(m.alpha_) for m in self.models]
        return self

    def predict(self, z):
        return np.exp(np.column_stack([m.predict(z) for m in self.models]))
