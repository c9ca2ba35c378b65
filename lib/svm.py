"""One-vs-rest linear SVMs on frozen features, as FAIR's fair_self_supervision_benchmark
(tools/svm/, extra_scripts/) and mmselfsup (tools/benchmarks/classification/svm_voc07/tools/)
run them for the VOC07 and low-shot figures. Pure numpy / scikit-learn: no network here.

Targets are an N x C int matrix with VOC's three states: 1 present, 0 absent, -1 "difficult"
(only difficult objects of that class). A single-label dataset is its one-hot matrix (no -1)."""
import contextlib
import warnings

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

COSTS = (1.0, 10.0, 100.0)  # mmselfsup eval_svm_full.sh / eval_svm_lowshot.sh: costs="1.0,10.0,100.0"
# svm_helper.parse_cost_list (both repos) silently appends 0.5**4 .. 0.5**19 to the given list
SMALL_COSTS = tuple(0.5 ** n for n in range(4, 20))
K_VALUES = (1, 2, 4, 8, 16, 32, 64, 96)
SAMPLES = 5


def normalize(x):
    """svm_helper.normalize_features: each row / (its L2 norm + 1e-5), in float64 (as load_input_data)."""
    x = np.asarray(x, dtype=np.float64)
    return x / (np.linalg.norm(x, axis=1) + 1e-5)[:, None]


def make_svm(cost):
    """The classifier of train_svm_kfold.py and train_svm_low_shot.py, setting for setting, except
    random_state: they leave liblinear's coordinate order random (their --random_seed is never
    used), so their figures vary a little from run to run; fixed here for reproducible tables."""
    return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, penalty="l2",
                     loss="squared_hinge", tol=1e-4, dual=True, max_iter=2000, random_state=0)


def voc_ap(positive, scores):
    """svm_helper.get_precision_recall + calculate_ap: the area under the precision envelope
    (VOC2010+ all-point AP), images ranked by np.argsort(scores)[::-1] (the benchmark's tie order).
    nan when there is no positive."""
    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        return float("nan")
    hit = positive[np.argsort(scores)[::-1]]
    tp, fp = np.cumsum(hit), np.cumsum(~hit)
    rec = np.concatenate([[0.0], tp / positive.sum(), [1.0]])
    prec = np.concatenate([[0.0], tp / (tp + fp), [0.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    i = np.where(rec[1:] != rec[:-1])[0] + 1
    return float(np.sum((rec[i] - rec[i - 1]) * prec[i]))


def one_hot(labels, num_classes):
    return np.eye(num_classes, dtype=np.int64)[np.asarray(labels)]


def _test_ap(clf, x_test, t):
    """AP of one class on the test set with its difficult images (-1) left out (test_svm.py)."""
    keep = t != -1
    return voc_ap(t[keep] == 1, clf.decision_function(x_test[keep]))


@contextlib.contextmanager
def _quiet():
    """liblinear stops at max_iter=2000 on the larger costs, as it does in the benchmark: one
    warning per fit (in each worker process) would bury the results."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@_quiet()
def _fit_class(x_train, t, x_test, t_test, costs, folds):
    """One class of svm_full: (cv APs per cost, chosen cost, test scores, test AP)."""
    # train_svm_kfold.py: label 0 -> -1 and the difficult (-1) stay -1, i.e. negatives in training
    y = np.where(t == 1, 1, -1)
    # the CV score is scikit-learn's 'average_precision' over StratifiedKFold(folds) without
    # shuffling (what cross_val_score(cv=3) does, as train_svm_kfold.py); the test AP is the
    # benchmark's own (voc_ap). The first best cost wins ties (np.argmax, test_svm.py).
    cv = [cross_val_score(make_svm(cost), x_train, y, cv=folds, scoring="average_precision").mean() for cost in costs]
    cost = costs[int(np.argmax(cv))]
    clf = make_svm(cost).fit(x_train, y)
    return cv, cost, clf.decision_function(x_test), _test_ap(clf, x_test, t_test)


def svm_full(x_train, t_train, x_test, t_test, costs=COSTS, folds=3, jobs=1, log=print):
    """Per class: C from `costs` by `folds`-fold cross-validated AP on trainval, refit on all of it,
    score the test set. Returns dict(ap (C,), cost (C,), cv (C x costs), scores (N_test x C)).
    `jobs` processes share the classes (as mmselfsup's train_svm_kfold_parallel.py)."""
    num_classes = t_train.shape[1]
    out = dict(ap=np.full(num_classes, np.nan), cost=np.full(num_classes, np.nan),
               cv=np.full((num_classes, len(costs)), np.nan), scores=np.zeros((len(x_test), num_classes)))
    todo = []
    for c in range(num_classes):
        if (t_train[:, c] == 1).sum() < folds:
            log(f"svm note: class {c} has {(t_train[:, c] == 1).sum()} training positives (< {folds} folds): skipped")
        else:
            todo.append(c)
    res = Parallel(n_jobs=jobs)(delayed(_fit_class)(x_train, t_train[:, c], x_test, t_test[:, c], costs, folds)
                                for c in todo)
    for c, (cv, cost, scores, ap) in zip(todo, res):
        out["cv"][c], out["cost"][c], out["scores"][:, c], out["ap"][c] = cv, cost, scores, ap
    return out


def lowshot_max_k(t_train, single_label):
    """The largest k every class can supply (k positives, and (C-1)k negatives on VOC)."""
    pos = (t_train == 1).sum(0)
    if single_label:
        return int(pos.min())
    neg = (t_train == 0).sum(0) // max(1, t_train.shape[1] - 1)
    return int(min(pos.min(), neg.min()))


def lowshot_sample(t_train, k, seed, sample, single_label):
    """One low-shot training set as a targets matrix, -1 = not drawn. VOC
    (create_voc_low_shot_samples.py): per class, k of its positives and (C-1)k of its negatives,
    drawn independently for each class (difficult images are never drawn). Single-label
    (as create_places_low_shot_samples.py): k images of every class, the same for all classes,
    so each one-vs-rest SVM sees k positives and (C-1)k negatives. Fixed seed per (seed, sample, k)."""
    rng = np.random.default_rng([seed, sample, k])
    num_classes = t_train.shape[1]
    out = np.full_like(t_train, -1)
    if single_label:
        labels = t_train.argmax(1)
        rows = np.concatenate([rng.choice(np.where(labels == c)[0], k, replace=False) for c in range(num_classes)])
        out[rows] = t_train[rows]
        return out
    for c in range(num_classes):
        for state, n in ((1, k), (0, (num_classes - 1) * k)):
            rows = rng.choice(np.where(t_train[:, c] == state)[0], n, replace=False)
            out[rows, c] = state
    return out


@_quiet()
def _fit_lowshot(x, y, x_test, t_test, cost):
    return _test_ap(make_svm(cost).fit(x, y), x_test, t_test)


def svm_lowshot(x_train, t_train, x_test, t_test, ks=K_VALUES, costs=COSTS, samples=SAMPLES, seed=0,
                single_label=False, jobs=1):
    """No cross-validation: for each k, sample and cost, the test mAP over classes
    (test_svm_low_shot.py); then the cost with the best mean over the samples is reported with
    that cost's mean / min / max / std over the samples (aggregate_low_shot_svm_stats.py; np.std,
    ddof 0). Figures in percent."""
    res, num_classes = {}, t_train.shape[1]
    for k in ks:
        draws = [lowshot_sample(t_train, k, seed, s, single_label) for s in range(samples)]
        fits = [(x_train[d[:, c] != -1], np.where(d[d[:, c] != -1, c] == 1, 1, -1), c, cost)
                for d in draws for cost in costs for c in range(num_classes)]
        aps = Parallel(n_jobs=jobs)(delayed(_fit_lowshot)(x, y, x_test, t_test[:, c], cost) for x, y, c, cost in fits)
        m = np.nanmean(np.reshape(aps, (samples, len(costs), num_classes)), axis=2)  # sample x cost
        best = int(np.argmax(m.mean(0)))
        v = 100 * m[:, best]
        res[k] = dict(cost=costs[best], mean=v.mean(), min=v.min(), max=v.max(), std=v.std(), samples=v.tolist(),
                      by_cost=(100 * m.mean(0)).tolist())
    return res


def top1(scores, labels):
    """Single-label accuracy (percent) of the argmax over the one-vs-rest SVM scores."""
    return 100.0 * float(np.mean(np.argmax(scores, 1) == np.asarray(labels)))
