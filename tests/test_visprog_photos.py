"""VisProg's editing modules on real photos shipped with scikit-image (no download): the output
pixels are checked, and each run writes its PNG and its rationale HTML."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmfm.chain.visprog import VisProg, write_html
from mmfm.chain.visprog.modules import Region, detect_faces, region_mask

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def astronaut():
    return Image.fromarray(skdata.astronaut())


def _run(prog, image, tmp_path, name):
    run = VisProg().run_program(prog, {"IMAGE": image}, task="edit")
    assert run.ok, run.error
    run.result.save(tmp_path / f"{name}.png")
    html = write_html(run, tmp_path / f"{name}.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and prog.splitlines()[0].split("=")[0] in html
    return run


def test_face_hidden_by_an_emoji(astronaut, tmp_path):
    faces = detect_faces(astronaut)
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    assert 150 < (x0 + x1) / 2 < 300 and 50 < (y0 + y1) / 2 < 180  # the astronaut's face
    run = _run("OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='smiley')\n"
               "RESULT=Result(var=IMAGE0)", astronaut, tmp_path, "emoji")
    out, src = np.asarray(run.result).astype(int), np.asarray(astronaut).astype(int)
    inner = (slice(y0 + (y1 - y0) // 5, y1 - (y1 - y0) // 5), slice(x0 + (x1 - x0) // 5, x1 - (x1 - x0) // 5))
    face = out[inner]
    yellow = (face[..., 0] > 200) & (face[..., 1] > 160) & (face[..., 2] < 110)
    assert yellow.mean() > 0.6  # the face box is covered by the emoji's yellow disc
    assert np.abs(out[300:, :] - src[300:, :]).max() == 0  # nothing else changed


def test_color_pop_keeps_the_person_in_color(astronaut, tmp_path):
    run = _run("OBJ0=Loc(image=IMAGE, object='person')\nIMAGE0=ColorPop(image=IMAGE, object=OBJ0)\n"
               "RESULT=Result(var=IMAGE0)", astronaut, tmp_path, "pop")
    regions = run.state["OBJ0"]
    mask = region_mask(astronaut, regions)
    out = np.asarray(run.result).astype(int)
    spread = out.max(-1) - out.min(-1)
    assert spread[~mask].max() <= 1  # outside the mask: grayscale
    assert 0.1 < mask.mean() < 0.7
    x0, y0, x1, y1 = detect_faces(astronaut)[0].box
    assert mask[y0:y1, x0:x1].mean() > 0.5  # the face belongs to the person
    assert spread[mask].mean() > 30  # inside: still in color (the orange suit)


def test_background_blur_leaves_the_person_sharp(astronaut, tmp_path):
    run = _run("OBJ0=Loc(image=IMAGE, object='person')\nIMAGE0=BgBlur(image=IMAGE, object=OBJ0)\n"
               "RESULT=Result(var=IMAGE0)", astronaut, tmp_path, "blur")
    mask = region_mask(astronaut, run.state["OBJ0"])
    out, src = np.asarray(run.result).astype(float), np.asarray(astronaut).astype(float)

    def sharpness(a, m):  # mean absolute horizontal gradient where m holds for both pixels
        g = np.abs(np.diff(a.mean(-1), axis=1))
        mm = m[:, 1:] & m[:, :-1]
        return g[mm].mean()

    from scipy.ndimage import binary_erosion

    inside, outside = binary_erosion(mask, iterations=4), binary_erosion(~mask, iterations=4)
    assert sharpness(out, outside) < 0.5 * sharpness(src, outside)
    assert sharpness(out, inside) > 0.9 * sharpness(src, inside)


def test_region_mask_uses_a_given_mask_as_is(astronaut):
    m = np.zeros((512, 512), bool)
    m[10:20, 30:40] = True
    assert (region_mask(astronaut, [Region((30, 10, 40, 20), mask=m)]) == m).all()


def test_replace_inpaints_the_region(astronaut, tmp_path):
    run = _run("OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Replace(image=IMAGE, object=OBJ0, prompt='a helmet')\n"
               "RESULT=Result(var=IMAGE0)", astronaut, tmp_path, "replace")
    out, src = np.asarray(run.result).astype(int), np.asarray(astronaut).astype(int)
    changed = np.abs(out - src).max(-1) > 0
    x0, y0, x1, y1 = run.state["OBJ0"][0].box
    assert changed[y0:y1, x0:x1].mean() > 0.3 and changed[300:].mean() < 0.01


def test_tag_draws_the_boxes(astronaut, tmp_path):
    run = _run("OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Tag(image=IMAGE, object=OBJ0)\nRESULT=Result(var=IMAGE0)",
               astronaut, tmp_path, "tag")
    x0, y0, x1, y1 = run.state["OBJ0"][0].box
    out = np.asarray(run.result).astype(int)
    edge = out[y0 + 20 : y1 - 20, x0]
    assert ((edge[:, 0] > 200) & (edge[:, 1] < 80)).all()  # a red box edge


def test_visprog_command_runs_a_program_and_reports_failures(astronaut, tmp_path):
    from tests.test_cli import run

    astronaut.save(tmp_path / "astronaut.png")
    (tmp_path / "ok.txt").write_text(
        "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='heart')\nRESULT=Result(var=IMAGE0)\n"
    )
    res = run("visprog", "--image", str(tmp_path / "astronaut.png"), "--program", str(tmp_path / "ok.txt"),
              "--out", str(tmp_path / "ok"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ok" / "result.png").is_file() and (tmp_path / "ok" / "rationale.html").is_file()
    (tmp_path / "fails.txt").write_text(
        "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='rocket')\nRESULT=Result(var=IMAGE0)\n"
    )
    res = run("visprog", "--image", str(tmp_path / "astronaut.png"), "--program", str(tmp_path / "fails.txt"),
              "--out", str(tmp_path / "fails"))
    assert res.returncode == 2 and "step 2 (line 2" in res.stderr and "Traceback" not in res.stderr
    page = (tmp_path / "fails" / "rationale.html").read_text()
    assert "unknown emoji" in page and "not run" in page  # the partial rationale of a failed run
    (tmp_path / "bad.txt").write_text("OBJ0=FaceDet(image=IMAGE\n")
    res = run("visprog", "--image", str(tmp_path / "astronaut.png"), "--program", str(tmp_path / "bad.txt"))
    assert res.returncode == 2 and "line 1, column" in res.stderr
    res = run("visprog", "--image", str(tmp_path / "astronaut.png"))
    assert res.returncode == 2 and "request" in res.stderr
    (tmp_path / "x.png").write_text("no image")
    res = run("visprog", "hide the face", "--image", str(tmp_path / "x.png"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
