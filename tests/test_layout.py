"""The house: lib/ imports no top-level script (Python's own `test` package shadows test.py from
any folder where the repo is not first on sys.path), and the kNN entry keeps its names."""
import ast
import os
import subprocess
import sys

from conftest import HANG_S, ROOT

SCRIPTS = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}  # cifar, main, test, linear, svm, ...


def test_lib_imports_no_top_level_script():
    for name in sorted(os.listdir(os.path.join(ROOT, "lib"))):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(ROOT, "lib", name)).read())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            bad = [m for m in mods if m.split(".")[0] in SCRIPTS]
            assert not bad, f"lib/{name} imports the top-level script {bad[0]}"


def test_lib_engine_imports_with_the_repo_appended_from_another_folder(tmp_path):
    code = ("import sys; sys.path.append(sys.argv[1]); import lib.engine, lib.knn; "
            "assert lib.knn.__file__.startswith(sys.argv[1]), lib.knn.__file__; print('ok')")
    r = subprocess.run([sys.executable, "-c", code, ROOT], cwd=tmp_path, capture_output=True, text=True, timeout=HANG_S)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_test_py_keeps_its_names():
    import test as entry
    from lib import knn
    for name in ("knn_predict", "knn_eval", "compute_features", "rank_by_score", "topk_neighbors", "vote", "kNN",
                 "NN", "BANK_CHUNK_BYTES", "_world", "_shard_loader"):
        assert hasattr(entry, name), name
    assert entry.knn_eval is knn.knn_eval


def test_main_py_test_transform_is_the_registrys():
    import main
    from datasets import registry
    seen = []
    orig = main.registry.open_split
    main.registry.open_split = lambda dataset, data, train, tf, *a, **k: seen.append(tf) or orig(dataset, data, train, tf)
    try:
        import conftest
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            main.task(main.get_args([conftest.write_imagefolder(d)]))
    finally:
        main.registry.open_split = orig
    same = lambda tf: repr(tf).replace("[", "(").replace("]", ")")  # main.py's statistics are lists
    assert same(seen[-1]) == same(registry.eval_transform("imagenet"))  # train_eval: the val transform
