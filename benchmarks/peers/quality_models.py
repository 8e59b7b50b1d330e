"""The quality models of the tuned peers, each tuned on the training rows only.

Every model takes features of the training prompts and a quality matrix
(prompts x experts, NaN where an expert has no outcome) and predicts a
quality per expert. Hyper-parameters are chosen by held-out squared error of
the predicted quality inside the training split; the test split is never seen.
"""

import numpy as np
import scipy.linalg
import xgboost as xgb
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

SEED = 1
THREADS = 1  # two shared cores: more threads spin-wait (tuned_peers.py)
VALID_SHARE = 0.2  # train-internal validation split for early stopping
XGB_DEPTHS = (2, 4, 6)
XGB_PARAMS = dict(objective="reg:squarederror", eta=0.1, subsample=0.8,
                  colsample_bytree=0.8, tree_method="hist", max_bin=64, seed=SEED)
XGB_MAX_ROUNDS = 400
XGB_PATIENCE = 20
RIDGE_ALPHAS = (1.0, 3.0, 10.0, 30.0, 100.0)
KNN_KS = (5, 10, 20, 40, 80, 160, 320)
CV_FOLDS = 5


def train_valid_split(n, seed=SEED):
    """Indices of a fixed train-internal (fit, validation) split."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * (1 - VALID_SHARE)))
    return np.sort(order[:cut]), np.sort(order[cut:])


class XgbModel:
    """One XGBoost regressor per expert; depth and rounds by early stopping."""

    def __init__(self, depth=None, seed=SEED):
        self.depth = depth  # None: chosen on the validation split
        self.seed = seed  # of the validation split and XGBoost's row and column sampling

    def _booster(self, z, y, depth, rounds, valid=None):
        params = {**XGB_PARAMS, "max_depth": depth, "nthread": THREADS, "seed": self.seed}
        evals = [(xgb.DMatrix(*valid), "valid")] if valid else []
        return xgb.train(params, xgb.DMatrix(z, label=y), rounds, evals=evals,
                         early_stopping_rounds=XGB_PATIENCE if valid else None,
                         verbose_eval=False)

    def tune(self, z, quality):
        """Per depth, per expert: best validation MSE and its round count."""
        fit, valid = train_valid_split(len(z), self.seed)
        results = {}
        for depth in ([self.depth] if self.depth else XGB_DEPTHS):
            errors, rounds = [], []
            for j in range(quality.shape[1]):
                f = fit[~np.isnan(quality[fit, j])]
                v = valid[~np.isnan(quality[valid, j])]
                booster = self._booster(z[f], quality[f, j], depth, XGB_MAX_ROUNDS,
                                        valid=(z[v], quality[v, j]))
                errors.append(booster.best_score ** 2)  # rmse -> mse
                rounds.append(booster.best_iteration + 1)
            results[depth] = (float(np.mean(errors)), rounds)
        return results

    def fit(self, z, quality):
        results = self.tune(z, quality)
        self.depth = min(results, key=lambda d: results[d][0])
        self.rounds = results[self.depth][1]
        self.cv = {f"depth{d}_valid_mse": e for d, (e, _) in results.items()}
        self.boosters = []
        for j, rounds in enumerate(self.rounds):
            has = ~np.isnan(quality[:, j])
            self.boosters.append(self._booster(z[has], quality[has, j],
                                               self.depth, rounds))
        return self

    def set_threads(self, n):
        for b in self.boosters:
            b.set_param({"nthread": n})

    def predict(self, z):
        return np.column_stack([b.inplace_predict(z) for b in self.boosters])

    def hyper_parameters(self):
        return {"max_depth": self.depth, "rounds": self.rounds, **self.cv,
                **{k: v for k, v in XGB_PARAMS.items() if k != "seed"}}


class RidgeModel:
    """Ridge per expert on the sparse TF-IDF; alpha per expert by validation.

    Solved in the dual (kernel X X^T, one row per prompt: far fewer rows than
    TF-IDF columns), then turned back into a weight vector so one query costs
    one sparse dot product. scikit-learn's RidgeCV does the same maths but
    eigendecomposes the kernel, minutes on these shared cores; a Cholesky
    solve per alpha is several times cheaper. The intercept is a constant
    feature of value 1 (so it is penalised like the rest; it hardly matters
    beside a thousands-row kernel).
    """

    def fit(self, x, quality):
        kernel = (x @ x.T).toarray().astype(np.float64) + 1.0  # + the constant feature
        fit, valid = train_valid_split(len(quality))
        errors = np.array([self._valid_mse(kernel, quality, fit, valid, alpha)
                           for alpha in RIDGE_ALPHAS])  # alphas x experts
        self.cv = errors.mean(axis=1)
        self.alphas = [float(RIDGE_ALPHAS[i]) for i in errors.argmin(axis=0)]
        # One solve per (alpha, rows with an outcome): experts sharing both
        # share the factorisation.
        groups = {}
        for j, alpha in enumerate(self.alphas):
            missing = tuple(np.flatnonzero(np.isnan(quality[:, j])))
            groups.setdefault((alpha, missing), []).append(j)
        dual = np.zeros_like(quality)
        for (alpha, missing), cols in groups.items():
            has = np.ones(len(quality), bool)
            has[list(missing)] = False
            dual[np.ix_(has, cols)] = solve_dual(kernel[np.ix_(has, has)],
                                                 quality[np.ix_(has, cols)], alpha)
        self.weights = np.asarray(x.T @ dual)  # columns x experts
        self.intercept = dual.sum(axis=0)  # the constant feature's weight
        return self

    @staticmethod
    def _valid_mse(kernel, quality, fit, valid, alpha):
        """Validation MSE per expert of the ridge fitted on `fit` rows.

        To solve every expert at once, a missing training outcome (20
        routerbench3 rows) is filled with the expert's mean for this choice
        only; the final fit leaves those rows out.
        """
        target = quality[fit]
        target = np.where(np.isnan(target), np.nanmean(target, axis=0), target)
        dual = solve_dual(kernel[np.ix_(fit, fit)], target, alpha)
        error = (kernel[np.ix_(valid, fit)] @ dual - quality[valid]) ** 2
        return np.nanmean(error, axis=0)

    def predict(self, x):
        return np.asarray(x @ self.weights) + self.intercept

    def hyper_parameters(self):
        return {"alpha_per_expert": self.alphas,
                **{f"alpha{a:g}_valid_mse": float(e) for a, e in zip(RIDGE_ALPHAS, self.cv)}}


def solve_dual(kernel, y, alpha):
    return scipy.linalg.solve(kernel + alpha * np.eye(len(kernel)), y, assume_a="pos")


def neighbour_mean(quality, has, neighbours):
    """Mean quality of the neighbours with an outcome, per prompt and expert."""
    total = quality[neighbours].sum(axis=1)
    count = has[neighbours].sum(axis=1)
    return total / np.maximum(count, 1)


class KnnModel:
    """Mean quality of the k nearest training prompts (cosine, brute force).

    Cosine similarity is the dot product of L2-normalised rows, against the
    training matrix transposed once at fit time: NearestNeighbors transposes
    it on every call, 0.3 s per query with the char n-grams.
    """

    def tune(self, x, quality):
        """5-fold CV mean squared error of each k in KNN_KS."""
        x = normalize(x)
        errors = {k: [] for k in KNN_KS}
        for fit, held in KFold(CV_FOLDS, shuffle=True, random_state=SEED).split(x):
            nearest = nearest_rows(x[held], x[fit].T.tocsr(), max(KNN_KS))
            has = ~np.isnan(quality[fit])
            filled = np.where(has, quality[fit], 0.0)
            for k in KNN_KS:
                error = (neighbour_mean(filled, has, nearest[:, :k]) - quality[held]) ** 2
                errors[k].append(np.nanmean(error))
        return {k: float(np.mean(e)) for k, e in errors.items()}

    def fit(self, x, quality):
        self.cv = self.tune(x, quality)
        self.k = min(self.cv, key=self.cv.get)
        self.train_t = normalize(x).T.tocsr()
        self.has = ~np.isnan(quality)
        self.quality = np.where(self.has, quality, 0.0)
        return self

    def predict(self, x):
        nearest = nearest_rows(normalize(x), self.train_t, self.k)
        return neighbour_mean(self.quality, self.has, nearest)

    def hyper_parameters(self):
        return {"k": self.k, **{f"k{k}_cv_mse": e for k, e in self.cv.items()}}


def nearest_rows(x, train_t, k):
    """Indices of the k most cosine-similar training rows, most similar first."""
    similarity = np.asarray((x @ train_t).todense())
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)
