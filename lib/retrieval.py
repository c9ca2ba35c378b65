"""Nearest neighbours of features, as the paper shows them (Fig. 1 / the authors' result pages: a
query, then its nearest training images) and as an index serves them: exact or FAISS search,
precision@K, the static page and the 2-D map. retrieve.py wires these; the features come from
lib/features.py, a feature file (lib/export.py) or raw pixels (lib/report.py)."""
import html
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint
from . import knn
from .errors import UserError

QUERY_CHUNK = 1024  # queries searched at once by the exact search (a chunk x bank-chunk block)


# --- labels: one class per image, or a set of classes (VOC) --------------------------------

def same_class(q_labels, r_labels):
    """B x K bool: does retrieval (b, j) share the query's class? Single-label: q_labels B, r_labels
    B x K. Multi-label (VOC, bool B x C and B x K x C): at least one present class in common."""
    if q_labels.dim() == 1:
        return r_labels.eq(q_labels[:, None])
    return (r_labels & q_labels[:, None, :]).any(-1)


def class_text(label, names):
    """'Shirt', or 'cat+dog' for a multi-label image (its present classes)."""
    label = torch.as_tensor(label)
    if label.dim() == 0:
        c = int(label)
        return "-" if c < 0 else names[c] if c < len(names) else str(c)  # -1: an unlabelled image
    present = label.nonzero().flatten().tolist()
    return "+".join(names[c] if c < len(names) else str(c) for c in present) or "(none)"


# --- search ---------------------------------------------------------------------------------

def exact_search(query, bank, k, chunk=QUERY_CHUNK):
    """(similarities, indices), B x k, of unit-norm `query` against `bank` by cosine similarity:
    chunked matrix products with a running top-k merge (knn.topk_neighbors), on the bank's device."""
    check_k(k, len(bank))
    sims, idx = [], []
    for a in range(0, len(query), chunk):
        s, i = knn.topk_neighbors(query[a:a + chunk].to(bank.device, bank.dtype), bank, k, knn.block_topk)
        sims.append(s.float().cpu())
        idx.append(i.cpu())
    if not sims:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    return torch.cat(sims), torch.cat(idx)


def others(query, bank, positions, k):
    """(similarities, indices) B x k of the queries, rows `positions` of `bank` themselves, among the
    other rows: the query's own row is left out (an unlabelled folder searched against itself)."""
    sims, idx = exact_search(query, bank, k + 1)
    keep = idx != torch.as_tensor(positions, device=idx.device)[:, None]
    keep &= keep.cumsum(1) <= k  # k per row: the first k that are not the query (all k + 1 if it fell out)
    return sims[keep].view(len(idx), k), idx[keep].view(len(idx), k)


def check_k(k, n):
    if not 1 <= k <= n:
        raise UserError(f"-k {k}: the bank has {n} training images, so K must be in 1..{n}")


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise UserError("--backend faiss needs FAISS: pip install faiss-cpu (or faiss-gpu), an optional "
                        "dependency; the default --backend exact needs nothing") from None
    return faiss


class FaissIndex:
    """FAISS inner-product search over unit-norm features (= cosine similarity): 'flat' (exact) or
    'ivf' (IndexIVFFlat: `nlist` k-means cells, `nprobe` of them searched per query)."""

    def __init__(self, bank, kind="flat", nlist=None, nprobe=32, seed=0, train_size=None):
        faiss = import_faiss()
        x = np.ascontiguousarray(bank.float().cpu().numpy())
        n, d = x.shape
        t0 = time.time()
        if kind == "flat":
            self.index = faiss.IndexFlatIP(d)
        elif kind == "ivf":
            nlist = nlist or default_nlist(n)
            if not 1 <= nlist <= n:
                raise UserError(f"--nlist {nlist}: must be in 1..{n} (the bank's size)")
            quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            # k-means on a seeded sample of 40 points per cell
            m = min(n, train_size or 40 * nlist)  # FAISS wants >= 39 per cell
            pick = np.random.default_rng(seed).choice(n, m, replace=False) if m < n else np.arange(n)
            self.index.cp.seed = seed % 2**31  # a C int
            self.index.train(x[np.sort(pick)])
            self.index.nprobe = max(1, min(nprobe, nlist))
        else:
            raise UserError(f"unknown FAISS index '{kind}' (flat or ivf)")
        self.index.add(x)
        self.kind, self.nlist, self.build_s = kind, nlist, time.time() - t0

    def search(self, query, k):
        check_k(k, self.index.ntotal)
        s, i = self.index.search(np.ascontiguousarray(query.float().cpu().numpy()), k)
        return torch.from_numpy(s), torch.from_numpy(i).long()


def default_nlist(n):
    """About 4 sqrt(N) cells (FAISS's guideline), a power of two: 4096 for 1.28M images."""
    return int(2 ** round(np.log2(max(1.0, 4 * np.sqrt(n)))))


def recall_at_k(approx_idx, exact_idx, approx_sims=None, exact_sims=None, tol=1e-5):
    """Fraction of the exact top-k found by an approximate search, averaged over queries. With the
    similarities, a result tied with the exact k-th (within `tol`) counts as found: among equal
    similarities either image is a right answer."""
    hits = (approx_idx[:, :, None] == exact_idx[:, None, :]).any(2)  # B x k: result j is in the exact top-k
    if approx_sims is not None:
        hits |= approx_sims >= exact_sims[:, -1:] - tol
    return float(hits.float().mean()) if hits.numel() else float("nan")


def precision_of(idx, q_labels, b_labels):
    """Percent of the retrieved training images (idx: queries x k) that share their query's class,
    averaged over every query (the figure of a page is over all val images, not the ones shown)."""
    hits = same_class(torch.as_tensor(q_labels), torch.as_tensor(b_labels)[idx]).double().mean(1)
    return 100 * float(hits.sum()) / max(1, len(idx))


@torch.no_grad()
def precision_at_k(query, q_labels, bank, b_labels, k, chunk=QUERY_CHUNK):
    """precision@k of `query` against `bank` by cosine similarity (exact_search, then precision_of)."""
    return precision_of(exact_search(query, bank, k, chunk)[1], q_labels, b_labels)


# --- the page -------------------------------------------------------------------------------

CSS = """body{font-family:sans-serif;margin:16px;color:#222}
table.m{border-collapse:collapse;margin:8px 0 16px}table.m td,table.m th{border:1px solid #bbb;padding:3px 8px}
.q{margin:14px 0;border-top:1px solid #ccc;padding-top:6px}.q h2{font-size:15px;margin:4px 0}
.row{display:flex;flex-wrap:nowrap;align-items:flex-start;margin:4px 0}
.src{width:120px;flex:none;font-size:12px;font-weight:bold;padding-top:20px;overflow-wrap:anywhere}
figure{margin:0 3px;width:THUMBpx;flex:none;text-align:center;font-size:10px}
figure img{width:THUMBpx;height:THUMBpx;object-fit:contain;display:block;border:3px solid #fff;background:#eee;
image-rendering:PIXELS}
figure.query img{border-color:#36c}figure.hit img{border-color:#4a4}figure.miss img{border-color:#d22}
figure.nn img{border-color:#ccc}
figure.miss figcaption{color:#d22;font-weight:bold}figcaption{overflow:hidden;white-space:nowrap;text-overflow:ellipsis}
"""
# every image reports whether it loaded: the headless-browser check (scripts/check_page.py) reads these
SCRIPT = """<script>window.addEventListener('load',function(){var im=Array.prototype.slice.call(document.images);
document.body.setAttribute('data-images',im.length);
document.body.setAttribute('data-broken',im.filter(function(i){return !i.complete||i.naturalWidth===0}).length);});
</script>"""


def _figure(kind, src, caption, title):
    e = html.escape
    return (f'<figure class="{kind}" title="{e(title)}"><img src="{e(src)}" alt="{e(title)}" loading="eager">'
            f"<figcaption>{caption}</figcaption></figure>")


def write_page(out, title, notes, sources, queries, q_labels, train_labels, names, thumb, pixelated, ids, labelled=True):
    """out/index.html: a metrics table (per source: precision@K over all val images, kNN top-1),
    then for each query one row per source: the query, then its top-K training images with class,
    similarity, and a red mark where the class differs from the query's. `sources`: dicts with
    name, precision, knn, sims and idx (len(queries) x K), positions in the splits; `thumb(split,
    position)` -> relative path; `ids[split][position]`: the dataset's index, the one shown. Not
    `labelled` (a folder of your own images): no table and no class marks, the similarity under each."""
    e = html.escape
    k = sources[0]["idx"].shape[1]
    rows = "".join(f"<tr><td>{e(s['name'])}</td><td>{s['precision']:.2f}</td><td>{s['knn']}</td></tr>"
                   for s in sources if labelled)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>",
             CSS.replace("THUMB", "72").replace("PIXELS", "pixelated" if pixelated else "auto"), "</style></head><body>",
             f"<h1>{e(title)}</h1>", *(f"<p>{e(n)}</p>" for n in notes)]
    if labelled:
        parts += [f"<table class='m'><tr><th>features</th><th>precision@{k} (%, all val images)</th>"
                  f"<th>kNN top-1 (%)</th></tr>{rows}</table>",
                  "<p>Blue: the query (a val image). Green: a retrieved training image of the query's class; "
                  "<b style='color:#d22'>red, with &#10007;</b>: another class. Under each image: its class and its "
                  "cosine similarity to the query.</p>"]
    else:
        parts.append("<p>Blue: the query. Then its nearest images among the others; under each its cosine similarity "
                     "to the query (no labels: no classes, no precision).</p>")
    for r, q in enumerate(queries):
        qname = class_text(q_labels[q], names)
        what = f"val image {ids['val'][q]}, class {e(qname)}" if labelled else f"image {ids['val'][q]}"
        parts.append(f"<div class='q'><h2>query {r + 1}: {what}</h2>")
        for s in sources:
            figs = [_figure("query", thumb("val", q), e(qname) if labelled else "query", f"val {ids['val'][q]}: {qname}")]
            hit = same_class(q_labels[q:q + 1], train_labels[s["idx"][r]][None])[0]
            for j in range(k):
                i, sim = int(s["idx"][r, j]), float(s["sims"][r, j])
                cname = class_text(train_labels[i], names)
                if not labelled:
                    figs.append(_figure("nn", thumb("train", i), f"{sim:.3f}", f"image {ids['train'][i]}, similarity {sim:.4f}"))
                    continue
                mark = "" if hit[j] else "&#10007; "
                figs.append(_figure("hit" if hit[j] else "miss", thumb("train", i), f"{mark}{e(cname)}<br>{sim:.3f}",
                                    f"train {ids['train'][i]}: {cname}, similarity {sim:.4f}"))
            parts.append(f"<div class='row'><div class='src'>{e(s['name'])}</div>{''.join(figs)}</div>")
        parts.append("</div>")
    parts += [SCRIPT, "</body></html>\n"]
    checkpoint.write_text_atomic(os.path.join(out, "index.html"), "\n".join(parts), "page")


class Thumbnails:
    """Writes out/thumbs/{split}-{index}.png|jpg once per shown image (only the shown ones): the
    28-32 px datasets at their own size as PNG (drawn enlarged, pixelated), larger images as
    JPEG of at most `size` px."""

    def __init__(self, out, datasets, small, size=96):
        self.out, self.datasets, self.small, self.size = out, datasets, small, size
        self.written = {}
        os.makedirs(os.path.join(out, "thumbs"), exist_ok=True)

    def __call__(self, split, index):
        key = (split, int(index))
        if key not in self.written:
            img = self.datasets[split][int(index)][0]
            name = f"thumbs/{split}-{int(index)}.{'png' if self.small else 'jpg'}"
            if not self.small:
                img = img.convert("RGB")
                img.thumbnail((self.size, self.size))
            path = os.path.join(self.out, name)
            img.save(path + ".tmp", "PNG" if self.small else "JPEG", **({} if self.small else {"quality": 85}))
            os.replace(path + ".tmp", path)  # derived pictures: renamed whole, not fsynced one by one
            self.written[key] = name
        return self.written[key]


# --- the map --------------------------------------------------------------------------------

def embed_2d(feats, method, seed):
    """N x 2 coordinates: t-SNE (scikit-learn, PCA init) or UMAP (umap-learn), seeded."""
    x = feats.float().numpy()
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise UserError("--map-method umap needs umap-learn (pip install umap-learn); the default tsne "
                            "needs only scikit-learn") from None
        return umap.UMAP(n_components=2, random_state=seed % 2**32, metric="cosine").fit_transform(x)
    from sklearn.manifold import TSNE
    return TSNE(n_components=2, init="pca", random_state=seed % 2**32,  # scikit-learn takes 32 bits
                perplexity=min(30.0, max(1.0, (len(x) - 1) / 3)), metric="cosine").fit_transform(x)


def map_subset(n, points, seed):
    """The val images of the map: `points` of them drawn with `seed` (all if fewer), in order."""
    if n <= points:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:points].sort().values


def write_map(path, sources, labels, names, points, seed, method="tsne"):
    """A PNG: one 2-D map per feature source, side by side, of the same val images, coloured by
    class (a multi-label image by its first present class), with a legend and the subset on the plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(labels)
    pick = map_subset(n, points, seed)
    lab = torch.as_tensor(labels)[pick]
    if lab.dim() == 2:  # VOC: the first present class
        lab = torch.where(lab.any(1), lab.float().argmax(1), torch.full((len(lab),), -1))
    classes = sorted(set(lab.tolist()))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources) + 1.6, 4.4), squeeze=False)
    t0 = time.time()
    for ax, (name, feats) in zip(axes[0], sources):
        xy = embed_2d(feats[pick], method, seed)
        for j, c in enumerate(classes):
            m = (lab == c).numpy()
            ax.scatter(xy[m, 0], xy[m, 1], s=3, color=cmap(j % cmap.N), label=names[c] if 0 <= c < len(names) else str(c))
        ax.set_title(name, fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
    if len(classes) <= 20:
        axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=3, frameon=False)
    fig.suptitle(f"{method.upper() if method == 'umap' else 't-SNE'} of {len(pick)} of {n} val images "
                 f"(seed {seed}), coloured by class", fontsize=10)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return len(pick), time.time() - t0


def write_manifest(out, info):
    checkpoint.write_text_atomic(os.path.join(out, "retrieve.json"), json.dumps(info, indent=1, sort_keys=True) + "\n",
                                 "manifest")


def normalize(x):
    return F.normalize(x.float(), dim=1)
