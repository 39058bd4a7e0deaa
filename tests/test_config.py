"""The config base (mmfm.config), the checkpoint registry (mmfm.interop.registry) and the shared
generation front end: every bad value is a ConfigError naming its field, every config round-trips,
and each format is read by the row meant for it."""

import json
import math

import pytest
import torch

import mmfm
from mmfm.errors import CheckpointError, ConfigError
from mmfm.interop.registry import formats, identify
from mmfm.models.clip import CLIP, CLIPConfig
from mmfm.models.coca import CoCaConfig
from mmfm.models.flamingo import FlamingoConfig
from mmfm.models.llava import LlavaConfig
from mmfm.models.sam import SAM, SAMConfig, sam_config
from mmfm.nn.decoder import DecoderConfig
from mmfm.nn.generate import GenerationConfig, cut_at_stop, sampling_config

TINY_CLIP = dict(embed_dim=16, vision=dict(image_size=16, patch_size=8, width=16, layers=1, heads=2),
                 text=dict(vocab_size=50, context_length=8, width=16, layers=1, heads=2, eot_token_id=49,
                           sot_token_id=48))


@pytest.mark.parametrize("cls", [CLIPConfig, CoCaConfig, LlavaConfig, FlamingoConfig, SAMConfig, DecoderConfig])
def test_every_config_round_trips_through_json(cls):
    c = cls()
    assert cls.from_dict(json.loads(json.dumps(c.to_dict()))) == c


@pytest.mark.parametrize("make, field", [
    (lambda: DecoderConfig(heads=0), "DecoderConfig.heads must be positive"),
    (lambda: DecoderConfig(dim=-8), "DecoderConfig.dim must be positive"),
    (lambda: DecoderConfig(layers="2"), "DecoderConfig.layers must be an integer"),
    (lambda: DecoderConfig(layers=True), "DecoderConfig.layers must be an integer"),
    (lambda: DecoderConfig(norm_eps=math.nan), "DecoderConfig.norm_eps must be a finite number"),
    (lambda: DecoderConfig(style="rnn"), "DecoderConfig.style must be 'llama' or 'gpt'"),
    (lambda: DecoderConfig(act="swish"), "DecoderConfig.act must be one of"),
    (lambda: CLIPConfig(vision=dict(heads=0)), "CLIPVisionConfig.heads must be positive"),
    (lambda: CLIPConfig(vision=dict(pool="mean")), "CLIPVisionConfig.pool must be 'cls' or 'attn'"),
    (lambda: CLIPConfig(vision=[1, 2]), "CLIPConfig.vision must be a CLIPVisionConfig"),
    (lambda: CLIPConfig(text=dict(width=-1)), "CLIPTextConfig.width must be positive"),
    (lambda: CLIPConfig(tokenizer="gpt2"), "CLIPConfig.tokenizer must be 'clip' or 'world'"),
    (lambda: CoCaConfig(pooler="double"), "CoCaConfig.pooler must be 'single' or 'separate'"),
    (lambda: LlavaConfig(base_lm="llama3"), "LlavaConfig.base_lm must be '' or 'smollm2'"),
    (lambda: LlavaConfig(vision_layers=["x"]), "LlavaConfig.vision_layers[0] must be an integer"),
    (lambda: SAMConfig(encoder_heads=0), "SAMConfig.encoder_heads must be positive"),
    (lambda: SAMConfig(global_attn_indexes=(2, 40)), "global_attn_indexes"),
    (lambda: FlamingoConfig(num_latents=0), "FlamingoConfig.num_latents must be positive"),
])
def test_a_bad_value_is_a_config_error_naming_its_field(make, field):
    with pytest.raises(ConfigError, match=field.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        make()


@pytest.mark.parametrize("raw", [[1, 2], None, "clip", 3])
def test_a_config_that_is_not_an_object_is_refused(raw):
    with pytest.raises(ConfigError, match="a config is a JSON object"):
        CLIPConfig.from_dict(raw)


def test_unknown_keys_are_refused_and_model_type_is_not_a_key():
    assert CLIPConfig.from_dict({"model_type": "mmfm-clip", **TINY_CLIP}).embed_dim == 16
    with pytest.raises(ConfigError, match="unknown CLIPConfig keys"):
        CLIPConfig.from_dict({**TINY_CLIP, "embed_dims": 16})


def test_the_registry_reads_each_format_with_its_row(tmp_path):
    clip = CLIP(CLIPConfig(**TINY_CLIP))
    sam = SAM(sam_config("world-tiny"))
    assert identify(clip.save_pretrained(tmp_path / "c")) == "mmfm-clip"
    assert identify(sam.save_pretrained(tmp_path / "s")) == "mmfm-sam"
    assert identify(mmfm.save(sam, tmp_path / "so", format="official")) == "official-sam"
    assert identify(tmp_path / "so" / "sam.pth") == "official-sam"
    assert identify(mmfm.save(sam, tmp_path / "sh", format="hf")) == "hf-sam"
    assert set(formats(clip)) == {"mmfm", "hf", "open_clip"} and set(formats(sam)) == {"mmfm", "official", "hf"}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for folder in ("s", "so", "sh"):
            assert torch.allclose(mmfm.load(tmp_path / folder).image_encoder(x), sam.image_encoder(x), atol=1e-5)
    with pytest.raises(ConfigError, match="can be saved as mmfm, hf, open_clip, not 'official'"):
        mmfm.save(clip, tmp_path / "x", format="official")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        mmfm.load(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        mmfm.load(tmp_path / "odd")


def test_a_model_class_reads_its_own_format_only(tmp_path):
    from mmfm.models.coca import CoCa

    folder = mmfm.save(CLIP(CLIPConfig(**TINY_CLIP)), tmp_path / "hf", format="hf")
    with pytest.raises(CheckpointError, match="not an mmfm CLIP config"):
        CLIP.from_pretrained(folder)
    assert isinstance(mmfm.load(folder), CLIP)  # mmfm.load reads every format
    with pytest.raises(CheckpointError, match="not a CoCa"):
        CoCa.from_pretrained(folder)


def test_sampling_arguments_have_one_meaning():
    greedy = sampling_config(8, temperature=0.0, stop="\n")
    assert not greedy.do_sample and greedy.stop_strings == ("\n",)
    assert sampling_config(8, temperature=0.7).do_sample
    assert sampling_config(8, do_sample=True, top_p=0.9).do_sample  # CoCa: top-p at temperature 1
    for bad in (math.nan, -1.0):
        with pytest.raises(ConfigError, match="temperature"):
            GenerationConfig(temperature=bad)
    with pytest.raises(ConfigError, match="top_p"):
        GenerationConfig(top_p=math.nan)
    assert cut_at_stop("red.\nblue", ["\n", "."]) == "red"
    assert cut_at_stop("red", ["\n"]) == "red"
