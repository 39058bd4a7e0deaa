"""VisProg's model-backed modules end to end on world images with small random models (a world-tokenizer
CLIP and the world-tiny SAM): the data flowing between steps has the right form (regions with masks of
the image's size, one selected region per query, labels from the given categories, crops on the right
side of a box). How well they answer needs trained models: that is measured, not tested here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmfm.chain.visprog import VisProg
from mmfm.chain.visprog.modules import Region
from mmfm.errors import ProgramError


@pytest.fixture(scope="module")
def vp():
    from mmfm.models.clip import CLIP, CLIPConfig
    from mmfm.models.sam import SAM
    from mmfm.text.tokenizer import CLIPTokenizer

    tok = CLIPTokenizer.world(context_length=16)
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(embed_dim=16, vision=dict(image_size=32, patch_size=8, width=16, layers=1, heads=2),
                           text=dict(vocab_size=tok.vocab_size, context_length=16, width=16, layers=1, heads=2,
                                     sot_token_id=tok.sot_token_id, eot_token_id=tok.eot_token_id),
                           tokenizer="world")).eval()
    clip.tokenizer = tok
    sam = SAM("world-tiny").eval()
    answers = []

    def vqa(image, question):
        answers.append((image.size, question))
        return "two"

    v = VisProg(clip=clip, sam=sam, vqa=vqa)
    v.context.options["amg"] = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    v.answers = answers
    return v


@pytest.fixture(scope="module")
def scene():
    from mmfm.world import World

    r, _ = World(seed=1, size=64).captioned("test", 2)
    return Image.fromarray(r.image)


def test_seg_select_classify_tag(vp, scene):
    run = vp.run_program(
        "OBJ0=Seg(image=IMAGE)\nOBJ1=Select(image=IMAGE, object=OBJ0, query='red circle,blue star')\n"
        "OBJ2=Classify(image=IMAGE, object=OBJ0, categories='circle, star, square')\n"
        "IMAGE0=Tag(image=IMAGE, object=OBJ2)\nRESULT=Result(var=IMAGE0)",
        {"IMAGE": scene},
        task="tag",
    )
    assert run.ok, run.error
    regions = run.state["OBJ0"]
    assert regions and all(r.mask is not None and r.mask.shape == (64, 64) for r in regions)
    assert 1 <= len(run.state["OBJ1"]) <= 2 and {r.label for r in run.state["OBJ1"]} <= {"red circle", "blue star"}
    assert len(run.state["OBJ2"]) == len(regions) and {r.label for r in run.state["OBJ2"]} <= {
        "circle",
        "star",
        "square",
    }
    assert run.result.size == scene.size


def test_question_modules_and_crops(vp, scene):
    vp.answers.clear()
    run = vp.run_program("BOX0=Loc(image=IMAGE, object='LEFT')\nIMAGE0=CropRightOf(image=IMAGE, box=BOX0)\n"
                         "IMAGE1=CropBelow(image=IMAGE, box=BOX0)\nIMAGE2=Crop(image=IMAGE, box=BOX0)\n"
                         "N=Count(box=BOX0)\nANSWER0=Vqa(image=IMAGE0, question='How many shapes?')\n"
                         "RESULT=Result(var=ANSWER0)", {"IMAGE": scene}, task="image_question")
    assert run.ok, run.error
    assert run.state["BOX0"][0].box == (0, 0, 32, 64) and run.state["N"] == 1
    assert run.state["IMAGE0"].size == (48, 64)  # right of the left half's centre (x = 16)
    assert run.state["IMAGE1"].size == (64, 32)  # below its centre (y = 32)
    assert run.state["IMAGE2"].size == (35, 64)  # the box padded by 10% (3.2 px) where the image allows
    assert vp.answers == [((48, 64), "How many shapes?")] and run.result == "two"


def test_open_vocabulary_loc_returns_scored_regions(vp, scene):
    run = vp.run_program("BOX0=Loc(image=IMAGE, object='red circle')\nRESULT=Result(var=BOX0)", {"IMAGE": scene})
    assert run.ok, run.error
    assert all(isinstance(r, Region) and 0.5 < r.score <= 1 and r.label == "red circle" for r in run.result)
    assert [r.score for r in run.result] == sorted((r.score for r in run.result), reverse=True)
    if len(run.result) > 1:  # overlapping candidates were merged by NMS
        from mmfm.vision.masks import box_iou

        b = torch.tensor([r.box for r in run.result], dtype=torch.float32)
        assert (box_iou(b, b) - torch.eye(len(b))).max() <= 0.5


def test_crop_without_a_region_is_a_named_failure(vp, scene):
    blank = Image.fromarray(np.full((64, 64, 3), 200, np.uint8))
    run = vp.run_program("OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Crop(image=IMAGE, box=OBJ0)\nRESULT=Result(var=IMAGE0)",
                         {"IMAGE": blank})
    assert not run.ok and isinstance(run.error, ProgramError) and "found nothing" in str(run.error)
    with pytest.raises(ProgramError, match="takes the images LEFT, RIGHT"):
        vp.run_program("RESULT=Result(var=LEFT)", {"IMAGE": scene}, task="two_images")
