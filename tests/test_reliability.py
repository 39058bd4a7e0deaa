"""The hostile-user cases of the reliability review, each reproduced: every one ends in a typed error
(the CLI: one line on stderr, exit code 2) or a valid result, never a traceback or a silent corruption.

The CLI runs in this process (`mmfm.cli.main.main` with its argv), so a stray exception fails the test
with its traceback, exactly what a user would have seen."""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import mmfm
import mmfm.lm
from mmfm import weights
from mmfm.errors import CheckpointError, ConfigError, InvalidImage, InvalidText, MMFMError

CLIP_DIR = str(weights.path("clip-world-tiny"))


def cli(capsys, *args) -> tuple[int, str, str]:
    from mmfm.cli import main as entry

    argv = sys.argv
    sys.argv = ["mmfm", *map(str, args)]
    try:
        entry.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = argv
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def refused(capsys, *args, match: str) -> str:
    """The command exits 2 with one error line that says `match`."""
    code, out, err = cli(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, out[-500:], err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel")
    Image.fromarray(np.zeros((1, 20000, 3), np.uint8)).save(d / "wide.png")
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(d / "scene.png")
    torch.manual_seed(0)
    from mmfm.models.sam import SAM, sam_config

    SAM(sam_config("world-tiny")).save_pretrained(d / "sam")
    (d / "afile").write_text("x")
    return d


# ------------------------------------------------------------------------------------------ images
def test_an_extreme_aspect_ratio_is_a_clear_error(capsys, files):
    refused(capsys, "segment", files / "wide.png", "--model", files / "sam", "--point", "5,0",
            "-o", files / "o.png", match="aspect")


@pytest.mark.parametrize("bad", [np.zeros((3,)), np.zeros((4, 4, 7)), np.array([["a"]]), np.zeros((0, 5, 3)),
                                 np.full((4, 4), np.nan)])
def test_arrays_that_are_not_images(bad):
    from mmfm.vision.io import load_image

    with pytest.raises(InvalidImage):
        load_image(bad)


# ------------------------------------------------------------------------------------------ text
@pytest.fixture(scope="module")
def smol():
    return mmfm.lm.default()


@pytest.mark.parametrize("text", [None, 3, b"bytes", "bad \udcff utf-8"])
def test_text_that_is_not_text(smol, text):
    from mmfm.text.tokenizer import CLIPTokenizer

    with pytest.raises(InvalidText):
        CLIPTokenizer.world()(text)
    with pytest.raises(InvalidText):
        smol.tokenizer.encode(text)
    with pytest.raises((InvalidText, mmfm.InvalidPrompt)):
        smol.tokenizer.encode_chat([{"role": "user", "content": text}])


def test_invalid_utf8_arguments_at_the_cli(capsys, files):
    refused(capsys, "chat", "caf\udce9", match="utf-8")
    refused(capsys, "classify", files / "scene.png", "--model", CLIP_DIR, "--labels", "red \udcff", match="utf-8")
    refused(capsys, "ask", files / "scene.png", "How many \udcff?", match="utf-8")


def test_the_python_api_bounds_its_work(smol):
    with pytest.raises(ConfigError, match="n must be an integer in 1..64"):
        smol.complete("hi", n=10**9)
    with pytest.raises(ConfigError, match="temperature"):
        smol.generate("hi", temperature=float("nan"))


# ------------------------------------------------------------------------------------------ models
def test_a_model_of_the_wrong_kind(capsys, files):
    refused(capsys, "segment", files / "scene.png", "--model", CLIP_DIR, "--point", "5,5", "-o",
            files / "o.png", match="needs a SAM")
    refused(capsys, "classify", files / "scene.png", "--model", files / "sam", "--labels", "a,b", match="needs a CLIP")
    refused(capsys, "segment", files / "scene.png", "--model", mmfm.lm.smollm2_path(), "--point", "5,5",
            match="needs a SAM")


@pytest.mark.parametrize("content", ["[1, 2]", "null", "\x00\x01\x02", '{"model_type": "mmfm-clip", "embed_dim": 0}',
                                     '{"model_type": "mmfm-clip", "embed_dim": -5}',
                                     '{"model_type": "mmfm-clip", "embed_dim": "big"}',
                                     '{"model_type": "mmfm-clip", "vision": {"width": 100000000, "heads": 1}}'])
def test_config_json_that_is_not_a_config(capsys, files, tmp_path, content):
    (tmp_path / "config.json").write_text(content)
    (tmp_path / "model.safetensors").write_bytes(b"")
    refused(capsys, "classify", files / "scene.png", "--model", tmp_path, "--labels", "a,b", match="config")


def test_corrupt_tokenizer_files(capsys, files, tmp_path):
    from mmfm.text.tokenizer import CLIPTokenizer

    for name, content in (("vocab.json", "{not json"), ("vocab.json", "[1, 2]")):
        (tmp_path / name).write_text(content)
        (tmp_path / "merges.txt").write_text("#version\na b\n")
        with pytest.raises(CheckpointError):
            CLIPTokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (tmp_path / "merges.txt").write_bytes(b"\xff\xfe\x00garbage with no pairs")
    with pytest.raises(CheckpointError):
        CLIPTokenizer.from_pretrained(tmp_path)


def test_pickles_and_paths(capsys, files, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": Evil()}))
    line = refused(capsys, "segment", files / "scene.png", "--model", tmp_path / "evil.pt", "--point", "1,1",
                   match="only tensors")
    assert "weights_only=False" not in line
    (tmp_path / "zero.pt").write_bytes(b"")
    refused(capsys, "segment", files / "scene.png", "--model", tmp_path / "zero.pt", "--point", "1,1", match="empty")
    # a mistyped local path is not sent to the Hub
    refused(capsys, "classify", files / "scene.png", "--model", f"{files}/clpi", "--labels", "a,b",
            match="no such file or folder")


def test_a_gguf_with_deeply_nested_arrays(capsys, files, tmp_path):
    import struct

    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 3) + b"key" + struct.pack("<I", 9)
    nested = struct.pack("<IQ", 9, 1) * 100_000 + struct.pack("<IQ", 4, 0)  # 100,000 arrays of one array
    (tmp_path / "deep.gguf").write_bytes(head + nested)
    refused(capsys, "chat", "hi", "--model", tmp_path / "deep.gguf", match="nested")


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("args, match", [
    (["--auto", "--points-per-side", "0"], "points-per-side"),
    (["--auto", "--points-per-side", "-3"], "points-per-side"),
    (["--auto", "--points-per-side", "3000"], "points-per-side"),
    (["--point", "5,5", "--scale", "0"], "scale"),
    (["--point", "5,5", "--scale", "2000"], "scale"),
])
def test_out_of_range_options(capsys, files, args, match):
    refused(capsys, "segment", files / "scene.png", "--model", files / "sam", *args, "-o", files / "o.png", match=match)


def test_outputs_that_cannot_be_written(capsys, files, tmp_path):
    refused(capsys, "segment", files / "scene.png", "--model", files / "sam", "--point", "5,5",
            "-o", files / "afile" / "o.png", match="cannot write")
    refused(capsys, "train", "clip", "--out", files / "afile", "--steps", "1", match="not a folder")


def test_choices_and_numbers(capsys, files):
    refused(capsys, "classify", files / "scene.png", "--model", CLIP_DIR, "--labels", "a,b", "--templates", "nope",
            match="templates")
    refused(capsys, "classify", files / "scene.png", "--model", CLIP_DIR, "--labels", "a,b", "--top", "-1",
            match="top")
    refused(capsys, "eval", "clip", "--model", CLIP_DIR, "--task", "nope", match="task")
    refused(capsys, "chat", "hi", "--temperature", "nan", match="temperature")
    refused(capsys, "chat", "hi", "--max-tokens", "0", match="max")
    refused(capsys, "serve", "--max-body-mb", "0", match="max-body-mb")
    refused(capsys, "serve", "--allow-files", files / "scene.png", match="not a folder")
    refused(capsys, "segment", files, "--model", "x", "--point", "1,1", match="--auto")


@pytest.mark.parametrize("args", [
    ["train", "clip", "--steps", "0"], ["train", "clip", "--lr", "nan"], ["train", "sam", "--batch-size", "-1"],
    ["eval", "sam", "--model", "x", "--n", "-5"], ["eval", "llava", "--n", "0"], ["world", "sample", "--n", "100000"],
    ["serve-llm", "--port", "70000"], ["caption", "x.png", "--model", "x", "--beams", "0"],
    ["serve", "--port", "0"], ["serve", "--max-queue", "-1"], ["index", "x", "--batch-size", "0"],
    ["search", "x.mmfm", "q", "-k", "0"],
])
def test_numbers_out_of_range_before_any_work(capsys, args):
    refused(capsys, *args, match="must be in")


def test_a_huge_program_file_is_refused_before_it_is_read(capsys, files, tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(2 * 1024**3)  # 2 GB, sparse: reading it whole would take the memory
    refused(capsys, "visprog", "--image", files / "scene.png", "--program", big, "--out", tmp_path / "o",
            match="too large")


def test_every_refusal_is_an_mmfm_error():
    """The typed errors are one family, and each is also the builtin users catch."""
    assert issubclass(ConfigError, MMFMError) and issubclass(ConfigError, ValueError)
    assert issubclass(InvalidImage, MMFMError) and issubclass(CheckpointError, MMFMError)
