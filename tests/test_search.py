"""`mmfm index` / `mmfm search` on folders of world images, through the real CLI and real FAISS: recall
through the index equals `eval clip --task retrieval`, re-runs embed only what changed, torchrun splits
the work and gives the same vectors, several processes read the index at once, bad input is one line."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mmfm.index.store import PhotoIndex
from mmfm.weights import path as shipped
from mmfm.world.export import export_pairs_csv

CLIP_DIR = str(shipped("clip-world-tiny"))


def mmfm(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "mmfm.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def world_folder(out: Path, n: int, start: int = 0, split: str = "test") -> Path:
    from PIL import Image

    from mmfm.world import World

    w = World(seed=0, size=64)
    items = []
    for i in range(start, start + n):
        r, caps = w.captioned(split, i)
        items.append((Image.fromarray(r.image), [caps[0].text]))
    return export_pairs_csv(items, out)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """200 world images and their index."""
    root = tmp_path_factory.mktemp("small")
    tsv = world_folder(root / "photos", 200)
    r = mmfm("index", root / "photos", "--out", root / "photos.mmfm", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["embedded"] == 200
    return root, tsv


def test_recall_through_search_equals_eval_retrieval_on_2000_images_and_reruns_embed_only_new(tmp_path):
    tsv = world_folder(tmp_path / "photos", 2000)
    r = mmfm("index", tmp_path / "photos", "--out", tmp_path / "i.mmfm", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    first = json.loads(r.stdout)
    assert (first["total"], first["embedded"], first["kept"], first["kind"]) == (2000, 2000, 0, "flat")
    assert "embed" in r.stderr and "2000/2000" in r.stderr  # the progress bar
    r = mmfm("search", tmp_path / "i.mmfm", "--eval", tsv, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)

    import mmfm as lib
    from mmfm.data.labeled import read_captions
    from mmfm.eval.files import retrieval_files

    ref = retrieval_files(lib.load(CLIP_DIR), read_captions(tsv, "csv"))
    assert got["texts"] == ref["texts"] == 2000 and got["images_missing_from_index"] == 0
    for k in (1, 5, 10):
        assert got[f"image_retrieval_recall@{k}"] == pytest.approx(ref[f"image_retrieval_recall@{k}"], abs=1e-4), k
    assert got["image_retrieval_recall@10"] > got["image_retrieval_recall@1"] > 0.02  # learned, not chance (1/2000)

    world_folder(tmp_path / "more", 10, start=5000)
    for p in sorted((tmp_path / "more" / "images").iterdir()):
        shutil.copy(p, tmp_path / "photos" / "images" / f"new-{p.name}")
    r = mmfm("index", tmp_path / "photos", "--out", tmp_path / "i.mmfm", "--json")
    again = json.loads(r.stdout)
    assert (again["total"], again["embedded"], again["kept"], again["removed"]) == (2010, 10, 2000, 0)
    r = mmfm("index", tmp_path / "photos", "--out", tmp_path / "i.mmfm")
    assert r.returncode == 0 and "0 embedded, 2010 kept, 0 removed" in r.stdout, r.stdout


def test_changed_deleted_and_unreadable_files(small, tmp_path):
    root, _ = small
    photos = tmp_path / "photos"
    shutil.copytree(root / "photos", photos)
    shutil.copytree(root / "photos.mmfm", tmp_path / "i.mmfm")
    r = mmfm("index", photos, "--out", tmp_path / "i.mmfm", "--json")
    # copied files have new mtimes and another root: everything is embedded again, and says why
    assert json.loads(r.stdout)["embedded"] == 200 and "another folder" in json.loads(r.stdout)["reason"]
    imgs = sorted((photos / "images").glob("*.png"))
    for p in imgs[:3]:
        p.unlink()
    shutil.copy(imgs[10], imgs[11])  # changed content (and mtime)
    (photos / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (photos / "notes.txt").write_text("not an image")
    r = mmfm("index", photos, "--out", tmp_path / "i.mmfm", "--json")
    rep = json.loads(r.stdout)
    assert (rep["total"], rep["embedded"], rep["kept"], rep["removed"], rep["bad"]) == (197, 1, 196, 3, 1)
    idx = PhotoIndex(tmp_path / "i.mmfm")
    assert len(idx) == 197 and not any(p.endswith(("broken.png", "notes.txt")) for p in idx.paths)
    assert idx.bad_records()["images/broken.png"][1]  # the reason is kept
    # the changed file's vector is now its new content's: equal to the image it was copied from
    v = {p: np.asarray(idx.vectors[i]) for i, p in enumerate(idx.paths)}
    assert np.abs(v[f"images/{imgs[11].name}"] - v[f"images/{imgs[10].name}"]).max() < 1e-5
    r = mmfm("index", photos, "--out", tmp_path / "i.mmfm", "--json")
    assert json.loads(r.stdout)["embedded"] == 0 and json.loads(r.stdout)["bad"] == 1  # not retried


def test_text_image_and_combined_queries_and_the_results_page(small, tmp_path):
    root, _ = small
    idx = PhotoIndex(root / "photos.mmfm")
    target = idx.path(17)
    r = mmfm("search", root / "photos.mmfm", "--image", target, "-k", "5", "--json", "--html", tmp_path / "r.html")
    assert r.returncode == 0, r.stderr[-2000:]
    hits = json.loads(r.stdout)
    assert len(hits) == 5 and hits[0]["path"] == str(target) and hits[0]["score"] > 0.999
    page = (tmp_path / "r.html").read_text()
    assert page.count("<figure") == 5 and page.count("data:image/jpeg;base64,") == 5
    r = mmfm("search", root / "photos.mmfm", "a photo of a red circle", "-k", "3")
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 3, r.stderr[-2000:]
    r = mmfm("search", root / "photos.mmfm", "a photo of a red circle", "--image", target, "--image-weight", "0.9",
             "-k", "1", "--json")
    assert json.loads(r.stdout)[0]["path"] == str(target)  # mostly the image: still itself


def test_several_processes_read_while_the_index_is_updated(small, tmp_path):
    root, _ = small
    photos = tmp_path / "photos"
    shutil.copytree(root / "photos", photos)
    r = mmfm("index", photos, "--out", tmp_path / "i.mmfm")
    assert r.returncode == 0
    world_folder(tmp_path / "more", 20, start=9000)
    shutil.copytree(tmp_path / "more" / "images", photos / "more")

    def job(i):
        if i == 0:
            return mmfm("index", photos, "--out", tmp_path / "i.mmfm", "--json")
        return mmfm("search", tmp_path / "i.mmfm", "a photo of a blue square", "-k", "5", "--json")

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(job, range(4)))
    assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
    assert json.loads(results[0].stdout)["embedded"] == 20
    assert all(len(json.loads(r.stdout)) == 5 for r in results[1:])
    assert len(PhotoIndex(tmp_path / "i.mmfm")) == 220


def test_torchrun_splits_the_files_and_gives_the_same_index(small, tmp_path):
    root, _ = small
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          port, "-m", "mmfm.cli.main", "index", str(root / "photos"), "--out", str(tmp_path / "two"),
                          "--json"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout)["embedded"] == 200
    one, two = PhotoIndex(root / "photos.mmfm"), PhotoIndex(tmp_path / "two")
    assert one.paths == two.paths
    assert np.abs(np.asarray(one.vectors) - np.asarray(two.vectors)).max() < 1e-5


def test_approximate_indexes_reach_their_recall_target():
    from mmfm.index.store import FileRecord, write_generation
    from mmfm.index.vectors import build, exact_topk, recall_at

    rng = np.random.default_rng(0)  # clustered, as embeddings are (uniform noise has no neighbours to find)
    centers = rng.normal(size=(64, 64)).astype(np.float32)
    x = centers[rng.integers(0, 64, 6_000)] + 0.3 * rng.normal(size=(6_000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for kind in ("ivf", "hnsw", "ivfpq"):  # IVF-PQ: its candidates re-ranked from the full vectors
        index, info = build(x, kind=kind)
        assert info["kind"] == kind and index.ntotal == 6_000
        assert info["recall_at_10"] >= 0.95, info
        # and PhotoIndex answers with the same re-ranking: held-out queries find their exact top 10
        with tempfile.TemporaryDirectory() as tmp:
            write_generation(Path(tmp), {"root": tmp, "model": "-", "fingerprint": "-", "dim": 64, "faiss": info},
                             [FileRecord(f"{i}.png", 1, 1) for i in range(len(x))], x, index, [])
            q = x[:50] + 0.05 * rng.normal(size=(50, 64)).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            got = np.array([[h.id for h in hs] for hs in PhotoIndex(tmp).search(q, 10)])
            assert recall_at(got, exact_topk(x, q, 10)) >= 0.9, kind
    _, info = build(x[:500])
    assert info["kind"] == "flat" and info["recall_at_10"] == 1.0


@pytest.mark.parametrize("args, says", [
    (["search", "{tmp}", "x"], "not a photo index"),
    (["search", "{idx}"], "give a text query"),
    (["search", "{idx}", "x", "-k", "0"], "-k"),
    (["search", "{idx}", "x", "--image", "{tmp}/nope.png"], "no such file"),
    (["search", "{idx}", "x", "--model", "{other}"], "built with"),
    (["index", "{tmp}/missing", "--out", "{tmp}/o"], "not a folder"),
    (["index", "{tmp}", "--kind", "lsh", "--out", "{tmp}/o"], "unknown index kind"),
])
def test_bad_input_is_one_line_and_exit_2(small, tmp_path, args, says):
    root, _ = small
    if "{other}" in " ".join(args):
        import mmfm as lib
        from mmfm.models.clip import CLIP

        shipped_clip = lib.load(CLIP_DIR)
        other = CLIP(shipped_clip.config)  # the same architecture, other (random) weights
        other.tokenizer = shipped_clip.tokenizer
        other.save_pretrained(tmp_path / "other")
    fill = {"{tmp}": str(tmp_path), "{idx}": str(root / "photos.mmfm"), "{other}": str(tmp_path / "other")}
    args = [a.replace(k, v) if isinstance(a, str) else a for a in args for k, v in [next(
        ((k, v) for k, v in fill.items() if k in a), ("", ""))]]
    r = mmfm(*args)
    assert r.returncode == 2, (r.returncode, r.stderr[-1000:])
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
