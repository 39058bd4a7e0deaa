"""Molmo2: parity with transformers' Molmo2ForConditionalGeneration (an image, several images, a video)
on tiny random configs saved in transformers' own format, both directions; the preprocessing against
transformers' image and video processors; bad input."""

from __future__ import annotations

import pytest
import torch
from transformers import Molmo2Config as HFConfig
from transformers import Molmo2ForConditionalGeneration, Molmo2ImageProcessor
from transformers.models.molmo2.video_processing_molmo2 import Molmo2VideoProcessor

import mmfm
from mmfm.errors import CheckpointError, InvalidImage, InvalidPrompt
from mmfm.models.molmo2 import Molmo2, vision_mask
from mmfm.vision import crops

V = 100  # the tiny LM's vocabulary; the vision ids follow it as in Molmo2's tokenizer
CROP, PATCH = 56, 14
IMAGE_KW = dict(crop_size=CROP, patch=PATCH, max_crops=4, margins=(1, 1), pool=(2, 2))


def hf_config(variant: str) -> HFConfig:
    qwen = variant == "qwen3"
    return HFConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=4, head_dim=8, image_size=[CROP, CROP], patch_size=PATCH),
        adapter_config=dict(vision_feature_layer=[-1, 0], hidden_size=32, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=8, intermediate_size=48, text_hidden_size=40),
        text_config=dict(hidden_size=40, num_attention_heads=4, num_key_value_heads=2, head_dim=10, vocab_size=V,
                         additional_vocab_size=12, num_hidden_layers=2, intermediate_size=64,
                         qk_norm_type="qwen3" if qwen else "olmo", norm_after=not qwen, attention_bias=not qwen,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000.0}),
        image_start_token_id=V, image_end_token_id=V + 1, image_patch_id=V + 2, low_res_image_start_token_id=V + 4,
        frame_start_token_id=V + 7, frame_end_token_id=V + 8)


VISION_IDS = [V + i for i in (0, 1, 2, 3, 4, 6, 7, 8)]  # Molmo2's processor marks these as vision tokens


@pytest.fixture(scope="module", params=["qwen3", "olmo"])
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    ref = Molmo2ForConditionalGeneration(hf_config(request.param)).eval()
    with torch.no_grad():  # random norms and embeddings so that a swapped tensor shows
        for name, p in ref.named_parameters():
            if "norm" in name or "positional" in name:
                p.add_(torch.randn_like(p) * 0.3)
    folder = tmp_path_factory.mktemp(f"hf_molmo2_{request.param}")
    ref.save_pretrained(folder)
    return ref, mmfm.load(folder), folder


def text(n: int, seed: int) -> list[int]:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def image_case(model: Molmo2, sizes):
    """Ids and inputs for images of the given sizes, laid out as Molmo2's chat template does."""
    ids, patches, pools = text(1, 0), [], []
    for i, (h, w) in enumerate(sizes):
        img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
        p, pool, grid = crops.image_inputs(img, **IMAGE_KW)
        ids += (text(2, 10 + i) if len(sizes) > 1 else []) + model.image_tokens(grid)
        patches.append(p)
        pools.append(pool)
    ids += text(7, 1)
    return torch.tensor([ids]), torch.cat(patches), crops.offset_pooling(pools, patches)


def video_case(model: Molmo2, frames=4):
    video = torch.randint(0, 256, (frames, 3, 45, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    patches, pooling, grid = crops.video_inputs(video, crop_size=CROP, patch=PATCH, pool=(3, 3))
    ids = text(1, 0)
    for f in range(frames):
        ids += text(2, 20 + f) + model.frame_tokens(int(grid[1]), int(grid[2]))  # the timestamp, then the frame
    ids += text(6, 2)
    return torch.tensor([ids]), patches, pooling


def hf_logits(ref, ids, patches, pooling, video: bool, n_images: int):
    types = torch.isin(ids, torch.tensor(VISION_IDS)).long()
    with torch.no_grad():
        if video:
            frames = patches.shape[0]
            rows = cols = int(round((pooling.shape[0] // frames) ** 0.5))
            return ref(input_ids=ids, pixel_values_videos=patches, video_token_pooling=pooling,
                       video_grids=torch.tensor([[frames, rows, cols]]), mm_token_type_ids=types).logits
        # one feature split per image; the split sizes only cut the features, so give the whole run
        grids = torch.tensor([[pooling.shape[0], 1, 0, 0]])
        return ref(input_ids=ids, pixel_values=patches, image_token_pooling=pooling, image_grids=grids,
                   mm_token_type_ids=types).logits


@pytest.mark.parametrize("case", ["image", "images", "video"])
def test_logits_and_greedy_tokens_match_transformers(pair, case):
    ref, model, _ = pair
    if case == "video":
        ids, patches, pooling = video_case(model)
    else:
        ids, patches, pooling = image_case(model, [(70, 90)] if case == "image" else [(70, 90), (30, 120), (56, 56)])
    want = hf_logits(ref, ids, patches, pooling, case == "video", 1)
    with torch.no_grad():
        got = model(ids, patches, pooling).logits
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4
    # the vision tokens really do attend both ways: a causal-only pass differs
    with torch.no_grad():
        causal = model(ids, patches, pooling, mask=vision_mask(torch.zeros_like(ids, dtype=torch.bool))).logits
    assert (causal - want).abs().max().item() > 1e-3

    types = torch.isin(ids, torch.tensor(VISION_IDS)).long()
    kw = dict(input_ids=ids, mm_token_type_ids=types, max_new_tokens=6, do_sample=False)
    if case == "video":
        f = patches.shape[0]
        kw.update(pixel_values_videos=patches, video_token_pooling=pooling, video_grids=torch.tensor([[f, 2, 2]]))
    else:
        grids = torch.tensor([[pooling.shape[0], 1, 0, 0]])
        kw.update(pixel_values=patches, image_token_pooling=pooling, image_grids=grids)
    ref.generation_config.eos_token_id = None
    ref.generation_config.pad_token_id = 0
    with torch.no_grad():
        hf_tokens = ref.generate(**kw)[0, ids.shape[1]:].tolist()
    assert model.generate_ids(ids, patches, pooling, max_new_tokens=6)[0] == hf_tokens


def test_saved_in_hf_format_loads_back_into_transformers(pair, tmp_path):
    ref, model, _ = pair
    mmfm.save(model, tmp_path / "hf", format="hf")
    back = Molmo2ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    ids, patches, pooling = image_case(model, [(70, 90)])
    want = hf_logits(ref, ids, patches, pooling, False, 1)
    assert (hf_logits(back, ids, patches, pooling, False, 1) - want).abs().max().item() <= 1e-5
    mmfm.save(model, tmp_path / "own")
    again = mmfm.load(tmp_path / "own")
    with torch.no_grad():
        assert torch.equal(again(ids, patches, pooling).logits, model(ids, patches, pooling).logits)


@pytest.mark.parametrize("size", [(70, 90), (30, 200), (56, 56), (300, 120), (14, 14)])
def test_image_preprocessing_matches_transformers(size):
    img = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    proc = Molmo2ImageProcessor(size={"height": CROP, "width": CROP}, patch_size=PATCH, max_crops=4,
                                overlap_margins=[1, 1], pooling_size=[2, 2])
    want = proc(images=[img.permute(1, 2, 0).numpy()], return_tensors="pt")
    patches, pooling, grid = crops.image_inputs(img, **IMAGE_KW)
    assert (patches - want["pixel_values"]).abs().max().item() <= 1e-6
    assert torch.equal(pooling, want["image_token_pooling"].long())
    assert grid.tolist() == want["image_grids"][0].tolist()


def test_video_preprocessing_and_frame_sampling_match_transformers():
    frames = torch.randint(0, 256, (5, 40, 60, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    proc = Molmo2VideoProcessor(size={"height": CROP, "width": CROP}, patch_size=PATCH, pooling_size=[3, 3],
                                do_rescale=True, do_normalize=True)
    want = proc(videos=[frames.numpy()], do_sample_frames=False, return_tensors="pt")
    patches, pooling, grid = crops.video_inputs(frames.permute(0, 3, 1, 2).contiguous(), crop_size=CROP,
                                                patch=PATCH, pool=(3, 3))
    assert (patches - want["pixel_values_videos"]).abs().max().item() <= 1e-6
    assert torch.equal(pooling, want["video_token_pooling"].long())
    assert grid.tolist() == want["video_grids"][0].tolist()
    from transformers.video_utils import VideoMetadata

    for total, fps in [(300, 30.0), (10, 2.0), (7, 25.0), (1000, 24.0), (5, None), (12, 6.0), (1, 30.0), (126, 2.0),
                       (127, 2.0), (128, 2.0), (945, 30.0), (946, 30.0), (3, 0.5)]:
        meta = VideoMetadata(total_num_frames=total, fps=fps)
        assert crops.sample_frame_indices(total, fps) == Molmo2VideoProcessor().sample_frames(meta).tolist()


def test_mismatched_placeholders_and_bad_inputs_are_typed_errors(pair, tmp_path):
    _, model, folder = pair
    ids, patches, pooling = image_case(model, [(70, 90)])
    with pytest.raises(InvalidPrompt, match="image patch tokens"):
        model(ids[:, :-20], patches, pooling)  # the prompt lost placeholders
    with pytest.raises(InvalidPrompt, match="image patch tokens"):
        model(ids, patches, pooling[:4])  # fewer features than placeholders
    with pytest.raises(InvalidImage):
        model(ids, patches, pooling + 10_000)  # indices past the patches
    with pytest.raises(InvalidImage):
        model(ids, patches[:, :5], pooling)  # wrong patch count for this ViT
    with pytest.raises(InvalidPrompt):
        model(ids + 1000)
    with pytest.raises(InvalidImage):
        crops.image_inputs(torch.zeros(3, 0, 5, dtype=torch.uint8))
    with pytest.raises(InvalidImage):
        crops.video_inputs(torch.zeros(2, 3, 8, 8))  # float, not uint8 frames
    with pytest.raises(InvalidImage, match="no frames"):
        crops.sample_frame_indices(0, 30.0)
    (tmp_path / "bad").mkdir()
    cfg = (folder / "config.json").read_text().replace('"rope_type": "default"', '"rope_type": "yarn"')
    (tmp_path / "bad" / "config.json").write_text(cfg)
    (tmp_path / "bad" / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="RoPE"):
        mmfm.load(tmp_path / "bad")


def test_column_tokens_in_frames_are_an_mmfm_option_transformers_cannot_load(tmp_path):
    model = tiny_model()
    plain = video_case(model)[0]
    model.config.frame_col_tokens = True
    ids, patches, pooling = video_case(model)
    c = model.config
    cols = int((ids == c.image_col_id).sum())
    # one column token closes each row of every frame's patches; the patches keep their slots
    assert cols > 0 and ids.shape[1] == plain.shape[1] + cols
    assert int((ids == c.image_patch_id).sum()) == int((plain == c.image_patch_id).sum()) == pooling.shape[0]
    row = model.frame_tokens(2, 3)
    assert row == [c.frame_start_id] + ([c.image_patch_id] * 3 + [c.image_col_id]) * 2 + [c.frame_end_id]
    with pytest.raises(CheckpointError, match="column tokens"):
        mmfm.save(model, tmp_path / "hf", format="hf")
    mmfm.save(model, tmp_path / "own")
    again = mmfm.load(tmp_path / "own")
    assert again.config.frame_col_tokens
    with torch.no_grad():
        assert torch.equal(again(ids, patches, pooling).logits, model(ids, patches, pooling).logits)


# ----------------------------------------------------------------------------------------- packing
def tiny_model(seed=0) -> Molmo2:
    from mmfm.models.molmo2 import Molmo2Config

    torch.manual_seed(seed)
    cfg = Molmo2Config(
        vision=dict(width=32, layers=2, heads=4, head_dim=8, mlp_dim=64, patch_size=PATCH, image_size=CROP),
        adapter=dict(feature_layers=(-1, 0), width=32, heads=4, head_dim=8, hidden=48),
        lm=dict(vocab_size=V, extra_vocab=12, dim=40, layers=2, heads=4, kv_heads=2, head_dim=10, hidden=64,
                tie_embeddings=False, qk_norm="head", max_seq_len=512),
        image_start_id=V, image_end_id=V + 1, image_patch_id=V + 2, image_col_id=V + 3, low_res_start_id=V + 4,
        image_low_id=V + 6, frame_start_id=V + 7, frame_end_id=V + 8)
    return Molmo2(cfg)


def examples(model: Molmo2):
    from mmfm.data.molmo2 import QA, Example

    out = []
    for e, (sizes, n_qa) in enumerate([([(70, 90)], 3), ([(40, 40), (56, 90)], 2), ([(30, 60)], 1)]):
        ids, patches, pooling = image_case(model, sizes)
        qas = [QA(text(3 + q, 100 * e + q), text(1 + 4 * q, 50 + 100 * e + q), "pointing" if q == 2 else "qa")
               for q in range(n_qa)]
        out.append(Example(ids[0].tolist(), qas, patches, pooling))
    return out


@pytest.mark.parametrize("weighting", [True, False])
def test_packed_message_trees_equal_each_pair_run_alone(weighting):
    from mmfm.data.molmo2 import pack, unpacked

    model = tiny_model()
    exs = examples(model)
    vis = model.config.vision_token_ids
    packed = pack(exs, vis, max_len=400, weighting=weighting)
    assert packed.input_ids.shape[0] < len(exs)  # several examples share a row
    out = model(**packed.model_inputs())
    out.loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    # each question-answer pair alone: its example's context, then the pair, the plain vision mask
    num, den = 0.0, 0.0
    for ex in exs:
        for j in range(1, len(ex.qas) + 1):
            one = unpacked([Example_with(ex, j)], vis, weighting=weighting)
            o = model(one.input_ids, one.patches, one.pooling, labels=one.labels, loss_weights=one.loss_weights)
            w = one.loss_weights[:, 1:][one.labels[:, 1:] != -100].sum()
            num, den = num + o.loss * w, den + w
    alone = num / den
    alone.backward()
    assert abs(out.loss.item() - alone.item()) <= 1e-5
    for k, g in grads.items():
        assert (g - model.get_parameter(k).grad).abs().max().item() <= 1e-5, k
    # the padded batch gives the same loss, with more tokens to compute
    padded = unpacked(exs, vis, weighting=weighting)
    with torch.no_grad():
        assert abs(model(**padded.model_inputs()).loss.item() - alone.item()) <= 1e-5
    assert padded.input_ids.numel() > 1.5 * packed.input_ids.numel()


def Example_with(ex, j):
    from mmfm.data.molmo2 import Example

    return Example(ex.context, [ex.qas[j - 1]], ex.patches, ex.pooling)


def test_token_weighting_follows_the_report_and_changes_the_loss():
    from mmfm.data.molmo2 import pack, token_weight

    assert token_weight(16, "qa") == 1.0 and token_weight(1, "qa") == 4.0
    assert token_weight(500, "caption") == 0.1 and token_weight(9, "pointing") == 0.2
    model = tiny_model()
    exs = examples(model)
    vis = model.config.vision_token_ids
    with torch.no_grad():
        on = model(**pack(exs, vis, max_len=400).model_inputs()).loss
        off = model(**pack(exs, vis, max_len=400, weighting=False).model_inputs()).loss
    assert abs(on.item() - off.item()) > 1e-4


def test_released_config_keys_load_with_the_same_logits(tmp_path):
    """The released checkpoints' config.json uses the original keys (vit_config, vit_layers, qkv_bias,
    rope_theta, ...) and lists more ViT layers than its weights hold; transformers trims them, so do we."""
    import json

    legacy = {
        "model_type": "molmo2", "architectures": ["Molmo2ForConditionalGeneration"], "tie_word_embeddings": False,
        "image_start_token_id": V, "image_end_token_id": V + 1, "image_patch_id": V + 2, "image_col_id": V + 3,
        "low_res_image_start_token_id": V + 4, "image_low_res_id": V + 6, "frame_start_token_id": V + 7,
        "frame_end_token_id": V + 8, "use_frame_special_tokens": True,
        "vit_config": {"model_type": "molmo2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 5,
                       "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 8,
                       "hidden_act": "gelu_pytorch_tanh", "image_default_input_size": [CROP, CROP],
                       "image_patch_size": PATCH, "image_num_pos": (CROP // PATCH) ** 2, "layer_norm_eps": 1e-6},
        "adapter_config": {"model_type": "molmo2", "vit_layers": [-3, -5], "hidden_size": 32,
                           "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 8, "hidden_act": "silu",
                           "intermediate_size": 48, "text_hidden_size": 40},
        "text_config": {"model_type": "molmo2_text", "hidden_size": 40, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "head_dim": 10, "vocab_size": V, "additional_vocab_size": 12,
                        "num_hidden_layers": 2, "intermediate_size": 64, "qk_norm_type": "qwen3", "qkv_bias": False,
                        "rope_theta": 5000.0, "rope_scaling": None, "layer_norm_eps": 1e-6, "norm_after": False,
                        "max_position_embeddings": 512},
    }
    torch.manual_seed(1)
    ref = Molmo2ForConditionalGeneration(HFConfig(**json.loads(json.dumps(legacy)))).eval()
    assert ref.config.vision_config.num_hidden_layers == 3  # transformers' trim: the deepest read layer + 1
    ref.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(legacy))  # as the hub ships it
    model = mmfm.load(tmp_path)
    assert model.config.vision.layers == 3 and model.config.adapter.feature_layers == (2, 0)
    ids, patches, pooling = image_case(model, [(70, 90)])
    want = hf_logits(ref, ids, patches, pooling, False, 1)
    with torch.no_grad():
        assert (model(ids, patches, pooling).logits - want).abs().max().item() <= 1e-4
