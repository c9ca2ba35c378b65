"""Weighted kNN (k=200, sigma=T) and 1-NN evaluation of NPID features: the lemniscate-style name of
lib/knn.py, which holds the code (lib/ imports nothing from the top level, and `import test` can
find Python's own `test` package first). Every name this file had is here."""
from lib.features import shard_loader as _shard_loader, world as _world  # noqa: F401
from lib.knn import (BANK_CHUNK_BYTES, NN, compute_features, kNN, knn_classify, knn_eval, knn_predict,  # noqa: F401
                     rank_by_score, topk_hits, topk_neighbors, vote)
