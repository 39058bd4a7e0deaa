"""`mmfm serve` live on loopback (a real uvicorn process, the shipped world models, a world photo index):
the official `openai` client gets answers with images and CLIP embeddings, the search / classify /
segment / point / ask routes answer as the local models do, the reliability tests of `serve-llm` (load,
client mistakes, clients that leave) pass against it, and the web page works in a real headless
Chromium, with a screenshot of each state written for CI."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmfm as lib
from mmfm.weights import path as shipped
from tests.test_llm_client import (  # noqa: F401 - the reliability tests, run again against this server
    KEY,
    free_port,
    test_64_clients_at_once_get_an_answer_or_a_polite_503,
    test_a_client_that_leaves_mid_stream_frees_its_place,
    test_client_mistakes_are_4xx,
    test_protocol_mistakes_are_4xx_not_resets,
)
from tests.test_search import world_folder

ARTIFACTS = Path(os.environ.get("MMFM_ARTIFACTS", "test-artifacts"))
N_PHOTOS = 40


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def post(url, body: dict, key=KEY, timeout=120):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    world_folder(root / "photos", N_PHOTOS)
    r = subprocess.run([sys.executable, "-m", "mmfm.cli.main", "index", str(root / "photos"), "--out",
                        str(root / "photos.mmfm")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return root


@pytest.fixture(scope="module")
def server(photos):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmfm.cli.main", "serve", "--port", str(port), "--dtype", "float32", "--index",
         str(photos / "photos.mmfm"), "--allow-files", str(photos / "photos"), "--sam-cache", str(photos / "sam"),
         "--max-body-mb", "1"],  # the reliability tests expect a 1 MB limit
        env=dict(os.environ, MMFM_API_KEY=KEY), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mmfm serve exited: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("mmfm serve did not come up in 180 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def llava():
    return lib.load(shipped("molmo-world-tiny"))


@pytest.fixture(scope="module")
def clip():
    return lib.load(shipped("clip-world-tiny"))


def scene(i: int):
    from mmfm.world import World

    return World(seed=0, size=64).captioned("test", i)


def test_openai_client_chat_with_images_and_embeddings(server, photos, llava, clip):
    import openai
    import torch

    client = openai.OpenAI(base_url=server, api_key=KEY, max_retries=0)
    img = photos / "photos" / "images" / "000003.png"
    question = "What color is the star?"
    expected = llava.ask(Image.open(img).convert("RGB"), question, max_new_tokens=16)
    assert expected
    raw = base64.b64encode(img.read_bytes()).decode()
    for url in (data_url(img), raw, img.resolve().as_uri()):  # data URL, bare base64, an allowed file URL
        res = client.chat.completions.create(model="molmo-world-tiny", max_tokens=16, temperature=0, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},  # LLaVA's order
                                         {"type": "text", "text": question}]}])
        assert res.choices[0].message.content == expected, url[:40]
        assert res.usage.prompt_tokens > 0 and res.usage.completion_tokens > 0
    stream = client.chat.completions.create(model="molmo-world-tiny", max_tokens=16, temperature=0, stream=True,
                                            messages=[{"role": "user", "content": [
                                                {"type": "image_url", "image_url": {"url": data_url(img)}},
                                                {"type": "text", "text": question}]}])
    assert "".join(c.choices[0].delta.content or "" for c in stream) == expected
    for bad in ("http://127.0.0.1:1/x.png", "file:///etc/passwd", "data:image/png;base64,AAAA", "not base64!"):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="x", max_tokens=4, messages=[{"role": "user", "content": [
                {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": bad}}]}])
    # text alone still goes to the language model
    text = client.chat.completions.create(model="x", max_tokens=8, temperature=0,
                                          messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in text.choices[0].message.content
    ids = {m.id for m in client.models.list().data}
    assert {"SmolLM2-135M-Instruct", "molmo-world-tiny", "clip-world-tiny", "sam-world-tiny"} <= ids, ids
    # CLIP embeddings of a text and an image, as the client decodes them (base64 by default)
    emb = client.embeddings.create(model="clip-world-tiny", input=["a photo of a red circle", data_url(img)])
    with torch.no_grad():
        t = clip.encode_text(clip.tokenizer(["a photo of a red circle"]), normalize=True)[0]
        v = clip.encode_image(clip.preprocess(Image.open(img).convert("RGB"))[None], normalize=True)[0]
    assert np.abs(np.array(emb.data[0].embedding) - t.numpy()).max() < 1e-5
    assert np.abs(np.array(emb.data[1].embedding) - v.numpy()).max() < 1e-5
    floats = client.embeddings.create(model="clip", input="a red circle", encoding_format="float")
    assert len(floats.data[0].embedding) == clip.config.embed_dim


def test_search_classify_point_and_ask_routes(server, photos, llava):
    img = photos / "photos" / "images" / "000005.png"
    code, res = post(f"{server}/search", {"image": data_url(img), "k": 3})
    assert code == 200 and res["results"][0]["path"].endswith("000005.png") and res["files"] == N_PHOTOS
    with urllib.request.urlopen(urllib.request.Request(f"http://{server.split('/')[2]}{res['results'][0]['thumbnail']}",
                                                       headers={"Authorization": f"Bearer {KEY}"})) as r:
        assert Image.open(io.BytesIO(r.read())).format == "JPEG"
    _, caps = scene(5)
    code, res = post(f"{server}/search", {"query": caps[0].text, "k": 5})
    assert code == 200 and len(res["results"]) == 5 and res["latency_ms"] > 0
    code, res = post(f"{server}/classify", {"image": data_url(img), "labels": ["red circle", "blue square"]})
    assert code == 200 and sorted(res["labels"]) == ["blue square", "red circle"] and abs(sum(res["probs"]) - 1) < 1e-3
    code, res = post(f"{server}/ask", {"image": data_url(img), "question": "How many objects are there?"})
    assert code == 200 and res["answer"] == llava.ask(Image.open(img).convert("RGB"), "How many objects are there?")
    code, res = post(f"{server}/point", {"image": data_url(img), "query": "the objects"})
    assert code == 200 and all(0 <= x <= 64 and 0 <= y <= 64 for x, y in res["points"]), res
    for route, body, status in [("search", {"k": 3}, 400), ("classify", {"image": data_url(img), "labels": []}, 400),
                                ("segment", {"image_id": "nope", "points": [[1, 1, 1]]}, 404),
                                ("ask", {"image": "data:image/png;base64,iVBO", "question": "hi"}, 400),
                                ("embeddings", {"input": []}, 400),
                                ("embeddings", {"input": "x", "dimensions": 7}, 400)]:
        code, res = post(f"{server}/{route}", body)
        assert code == status and res["error"]["message"], (route, code, res)
    assert post(f"{server}/search", {"query": "x"}, key="wrong")[0] == 401


def test_segment_embeds_once_then_each_click_is_a_decode(server, photos):
    r, _ = scene(7)
    img = photos / "photos" / "images" / "000007.png"
    code, first = post(f"{server}/segment/image", {"image": data_url(img)})
    assert code == 200 and (first["width"], first["height"]) == (64, 64)
    code, again = post(f"{server}/segment/image", {"image": data_url(img)})
    assert again["cached"] and again["image_id"] == first["image_id"]
    assert (photos / "sam" / f"{first['image_id']}.safetensors").is_file()  # --sam-cache keeps it on disk
    k = int(np.argmax([m.sum() for m in r.masks]))
    cy, cx = np.argwhere(r.masks[k]).mean(0)
    code, res = post(f"{server}/segment", {"image_id": first["image_id"], "points": [[float(cx), float(cy), 1]]})
    assert code == 200 and len(res["masks"]) == 3
    png = Image.open(io.BytesIO(base64.b64decode(res["masks"][0]["png"].split(",", 1)[1])))
    mask = np.asarray(png)[..., 3] > 0
    iou = (mask & r.masks[k]).sum() / (mask | r.masks[k]).sum()
    assert iou > 0.6, iou


def test_sam_embedding_saved_and_loaded(tmp_path):
    from mmfm.errors import CheckpointError
    from mmfm.models.sam import SAM
    from mmfm.models.sam.predictor import SamPredictor

    r, _ = scene(2)
    sam = lib.load(shipped("sam-world-tiny"))
    p = SamPredictor(sam)
    p.set_image(r.image)
    a = p.predict(point_coords=np.array([[20.0, 30.0]]), point_labels=np.array([1]))
    p.save_image_embedding(tmp_path / "e.safetensors")
    q = SamPredictor(sam)
    q.load_image_embedding(tmp_path / "e.safetensors")
    b = q.predict(point_coords=np.array([[20.0, 30.0]]), point_labels=np.array([1]))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    other = SamPredictor(SAM(sam.config))
    with pytest.raises(CheckpointError, match="another SAM"):
        other.load_image_embedding(tmp_path / "e.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"nonsense")
    with pytest.raises(CheckpointError):
        q.load_image_embedding(tmp_path / "bad.safetensors")


def test_segment_auto_over_a_folder(photos, tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    for i in range(3):
        shutil.copy(photos / "photos" / "images" / f"{i:06d}.png", folder / f"{i}.png")
    r = subprocess.run([sys.executable, "-m", "mmfm.cli.main", "segment", str(folder), "--auto", "--model",
                        str(shipped("sam-world-tiny")), "--out", str(tmp_path / "masks"), "--points-per-side", "8"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for i in range(3):
        recs = json.loads((tmp_path / "masks" / f"{i}.json").read_text())
        assert isinstance(recs, list) and (tmp_path / "masks" / f"{i}.png").is_file()
        assert all(rec["segmentation"]["size"] == [64, 64] for rec in recs)


# ------------------------------------------------------------------------------------------ browser
@pytest.fixture(scope="module")
def browser():
    from tests.browser import launch

    with launch() as b:
        yield b


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"serve-{name}.png"), full_page=True)


@pytest.mark.browser
def test_the_web_page_in_a_real_browser(server, photos, browser, llava):
    base = server.rsplit("/v1", 1)[0]
    page = browser.new_page()
    page.goto(base + "/")
    page.wait_for_selector("#key-box:not([hidden])")  # the server wants a key: the page asks for it
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.getElementById('search-help').textContent.includes('40 files')")

    # search: a world image's own caption finds it first (picked through the API, then typed into the page)
    target = None
    for i in range(N_PHOTOS):
        cap = scene(i)[1][0].text
        code, res = post(f"{server}/search", {"query": cap, "k": 1})
        if res["results"][0]["path"].endswith(f"{i:06d}.png") and sum(
                scene(j)[1][0].text == cap for j in range(N_PHOTOS)) == 1:
            target = (i, cap)
            break
    assert target is not None, "no caption of the 40 images retrieves its own image first"
    page.fill("#search-text", target[1])
    page.click("#search-go")
    page.wait_for_selector("#search-results figure img[src^='blob:']")
    first = page.get_attribute("#search-results figure", "data-path")
    assert first.endswith(f"{target[0]:06d}.png")
    assert "search" in page.inner_text("#search-latency") and " ms" in page.inner_text("#search-latency")
    shot(page, "search")

    # click-to-segment: a click on the largest object gives a mask overlay that covers it
    page.click("nav button[data-tab=segment]")
    r, _ = scene(7)
    page.set_input_files("#segment-image", str(photos / "photos" / "images" / "000007.png"))
    page.wait_for_function("document.getElementById('segment-latency').textContent.includes('embed')")
    k = int(np.argmax([m.sum() for m in r.masks]))
    cy, cx = np.argwhere(r.masks[k]).mean(0)
    box = page.locator("#segment-canvas").bounding_box()
    page.mouse.click(box["x"] + (cx + 0.5) * box["width"] / 64, box["y"] + (cy + 0.5) * box["height"] / 64)
    page.wait_for_function("document.getElementById('segment-latency').textContent.includes('decode')")
    src = page.get_attribute("#segment-mask", "src")
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))[..., 3] > 0
    iou = (mask & r.masks[k]).sum() / (mask | r.masks[k]).sum()
    assert iou > 0.6, iou
    shot(page, "segment")

    # ask and point: the answer on the page is the model's answer to the uploaded image
    page.click("nav button[data-tab=ask]")
    img = photos / "photos" / "images" / "000005.png"
    page.set_input_files("#ask-image", str(img))
    page.fill("#ask-question", "How many objects are there?")
    page.click("#ask-go")
    page.wait_for_function("document.getElementById('ask-answer').textContent.length > 0")
    assert page.inner_text("#ask-answer") == llava.ask(Image.open(img).convert("RGB"), "How many objects are there?")
    page.click("#point-go")
    page.wait_for_function("document.getElementById('ask-answer').textContent.includes('point')")
    points = json.loads(page.get_attribute("#ask-canvas", "data-points"))
    assert isinstance(points, list)
    shot(page, "ask")

    # classify
    page.click("nav button[data-tab=classify]")
    page.set_input_files("#classify-image", str(img))
    page.fill("#classify-labels", "red circle, blue square, green triangle")
    page.click("#classify-go")
    page.wait_for_selector("#classify-results tr")
    assert page.locator("#classify-results tr").count() == 3
    assert "classify" in page.inner_text("#classify-latency")
    shot(page, "classify")
    page.close()
