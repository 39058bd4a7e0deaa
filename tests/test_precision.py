"""--precision auto: the faster precision is measured on the step itself, cached per host and step,
leaves no trace on the run (a run that chose bf16 is the run told bf16), is printed and recorded in
the metrics, survives a resume; a frozen bf16 LM follows the choice exactly and an fp32 one is never
rounded; a wrong value is one line and exit code 2."""

import json
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from mmfm import precision as P
from mmfm.errors import ConfigError
from mmfm.train.trainer import FrozenLMPrecision, TrainConfig, Trainer

NATIVE_BF16 = P.native_bf16  # the real check (the fixture below stands in for it)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFM_CACHE_DIR", str(tmp_path / "cache"))
    # measure as a host that computes bf16 does (on an AVX2-only host auto skips bf16 unmeasured:
    # test_auto_skips_bf16_where_the_cpu_emulates_it)
    monkeypatch.setattr(P, "native_bf16", lambda: True)


def test_choose_takes_the_fastest_median_and_caches_it():
    calls = []

    def run(p):  # a step whose cost depends on the precision: bf16 with math attention is the fast one
        calls.append(p.name)
        time.sleep({"fp32": 0.02, "bf16": 0.05, "bf16-math": 0.012}[p.name])

    c = P.choose("auto", run, "sig-a", rounds=3)
    assert c.precision.name == "bf16-math" and not c.cached
    assert calls.count("fp32") == calls.count("bf16-math") == 4  # warm-up + 3 rounds
    assert calls.count("bf16") == 2  # warm-up + the first round: over twice the fastest, not timed again
    assert c.ms["fp32"] > 15 and c.ms["bf16-math"] < c.ms["fp32"] < c.ms["bf16"]
    assert "math attention" in c.describe() and "measured" in c.describe()
    calls.clear()
    again = P.choose("auto", run, "sig-a")
    assert again.cached and again.precision.name == "bf16-math" and calls == []
    assert "cached" in again.describe()
    record = json.loads(P.cache_file().read_text())
    assert len(record) == 1 and next(iter(record.values()))["host"] == P.host_key()
    P.choose("auto", run, "sig-b")  # another step is measured on its own
    assert calls and len(json.loads(P.cache_file().read_text())) == 2
    # asked for fp32: nothing measured; asked for bf16: only the attention kernel is chosen
    calls.clear()
    assert P.choose("fp32", run, "sig-c").precision.name == "fp32" and calls == []
    assert P.choose("bf16", run, "sig-c").precision.name == "bf16-math" and set(calls) == {"bf16", "bf16-math"}
    with pytest.raises(ConfigError):
        P.choose("fp16", run, "sig-c")


def test_choose_restores_random_states():
    torch.manual_seed(3)
    want = torch.rand(4)
    torch.manual_seed(3)
    P.choose("auto", lambda p: torch.rand(1000), "rng", rounds=2)
    assert torch.equal(torch.rand(4), want)


def test_contexts_do_what_they_say():
    x = torch.randn(4, 8)
    lin = nn.Linear(8, 8)
    with P.PRECISIONS["fp32"].context():
        assert lin(x).dtype == torch.float32
    with P.PRECISIONS["bf16-math"].context():
        assert lin(x).dtype == torch.bfloat16
        q = torch.randn(1, 2, 5, 8, dtype=torch.bfloat16)
        y = nn.functional.scaled_dot_product_attention(q, q, q)
    ref = torch.softmax(q.float() @ q.float().transpose(-1, -2) / 8 ** 0.5, -1) @ q.float()
    assert (y.float() - ref).abs().max() < 0.05


class TinyStep(nn.Module):
    """A step with attention, a norm with running statistics and dropout: everything timing could disturb."""

    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.Dropout(0.2), nn.Linear(32, 16))

    def forward(self, batch):
        h = self.model(batch["x"])
        a = nn.functional.scaled_dot_product_attention(h[None, None], h[None, None], h[None, None])[0, 0]
        return ((a.float() - batch["y"]) ** 2).mean(), {}


def _batch(step, micro, rank, world):
    g = torch.Generator().manual_seed(step)
    return {"x": torch.randn(64, 16, generator=g), "y": torch.randn(64, 16, generator=g)}


def _train(out, precision, steps=6):
    torch.manual_seed(0)
    module = TinyStep()
    cfg = TrainConfig(steps=steps, batch_size=64, lr=1e-2, warmup=1, log_every=1, progress=False, precision=precision)
    trainer = Trainer(module, cfg, _batch, out)
    hist = trainer.train()
    return trainer, [r["loss"] for r in hist], module.state_dict()


def test_auto_leaves_no_trace_and_is_recorded(tmp_path):
    measured, losses, state = _train(tmp_path / "measured", "auto")
    chosen = measured.choice.precision.name
    assert not measured.choice.cached and set(measured.choice.ms) == {"fp32", "bf16", "bf16-math"}
    cached, cached_losses, cached_state = _train(tmp_path / "cached", "auto")  # same step: read from the cache
    assert cached.choice.cached and cached.choice.precision.name == chosen
    assert losses == cached_losses  # bit for bit: timing changed no weight, running statistic or random draw
    assert all(torch.equal(state[k], cached_state[k]) for k in state)
    recs = [json.loads(ln) for ln in (tmp_path / "measured" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and {r["precision"] for r in recs} == {chosen}
    assert torch.load(tmp_path / "measured" / "checkpoint.pt", weights_only=True)["precision"] == chosen


def test_frozen_lm_follows_the_choice_without_rounding():
    class LM(nn.Module):
        def __init__(self, dtype):
            super().__init__()
            self.w = nn.Linear(8, 8).to(dtype).requires_grad_(False)

    class Module(FrozenLMPrecision, nn.Module):
        def __init__(self, dtype):
            super().__init__()
            self.model = nn.Module()
            self.model.lm = LM(dtype)
            self.model.proj = nn.Linear(8, 8)  # trainable, fp32 throughout

    m = Module(torch.bfloat16)
    w0 = m.model.lm.w.weight.clone()
    m.apply_precision(P.PRECISIONS["fp32"])
    assert m.model.lm.w.weight.dtype == torch.float32 and torch.equal(m.model.lm.w.weight.bfloat16(), w0)
    m.apply_precision(P.PRECISIONS["bf16"])
    assert m.model.lm.w.weight.dtype == torch.bfloat16 and torch.equal(m.model.lm.w.weight, w0)
    m.apply_precision(None)
    assert torch.equal(m.model.lm.w.weight, w0) and m.model.proj.weight.dtype == torch.float32
    f = Module(torch.float32)
    w1 = f.model.lm.w.weight.clone()
    f.apply_precision(P.PRECISIONS["bf16-math"])  # autocast casts per op; the stored weights stay exact
    assert f.model.lm.w.weight.dtype == torch.float32 and torch.equal(f.model.lm.w.weight, w1)


def test_resume_keeps_the_precision_the_run_began_with(tmp_path):
    trainer, _, _ = _train(tmp_path / "r", "auto", steps=4)
    P.cache_file().unlink()  # a resume must not measure again (the host may be busier now)
    cfg = TrainConfig(steps=4, batch_size=64, lr=1e-2, warmup=1, log_every=1, progress=False)
    again = Trainer(TinyStep(), cfg, _batch, tmp_path / "r")
    again.load()
    assert again.choice.precision.name == trainer.choice.precision.name and not P.cache_file().exists()


def test_training_config_accepts_the_older_switch_and_refuses_nonsense():
    assert TrainConfig().update(bf16=False).precision == "fp32"
    assert TrainConfig().update(bf16=True).precision == "bf16"
    assert TrainConfig().precision == "auto"
    with pytest.raises(ConfigError):
        TrainConfig().update(precision="fp16")


def test_cli_refuses_a_wrong_precision_in_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mmfm.cli.main", "train", "clip", "--precision", "fp16",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--precision" in res.stderr and "Traceback" not in res.stderr


def test_lm_weights_dtype_is_the_faster_measured_one_and_is_cached(capsys):
    from mmfm.cli.options import say_dtype
    from mmfm.lm.model import as_dtype

    c = P.lm_weights_dtype("auto", features=(64, 128), rounds=3)
    assert c.dtype in ("float32", "bfloat16") and not c.cached and set(c.ms) == {"float32", "bfloat16"}
    assert c.ms[c.dtype] == min(c.ms.values())
    again = P.lm_weights_dtype("auto", features=(64, 128))
    assert again.cached and again.dtype == c.dtype and again.ms == c.ms
    # an explicit dtype is taken as asked and measures nothing
    assert P.lm_weights_dtype("bf16") == P.WeightsChoice("bfloat16", {})
    with pytest.raises(ConfigError):
        P.lm_weights_dtype("float16")
    # what the LM loaders and the CLI use: the choice at the LM's own shapes
    chosen = P.lm_weights_dtype("auto")
    assert as_dtype("auto") == {"float32": torch.float32, "bfloat16": torch.bfloat16}[chosen.dtype]
    say_dtype("auto")
    err = capsys.readouterr().err
    assert f"dtype {chosen.dtype}" in err and "cached measurement" in err
    say_dtype("float32")
    assert capsys.readouterr().err == ""


def test_lm_head_dtype_is_the_faster_measured_one_and_is_cached():
    c = P.lm_head_dtype("auto", shape=(512, 64), rounds=3)
    assert c.dtype in ("bfloat16", "int8") and not c.cached and set(c.ms) == {"bfloat16", "int8"}
    assert c.ms[c.dtype] == min(c.ms.values()) and f"LM head {c.dtype} (measured" in c.describe()
    again = P.lm_head_dtype("auto", shape=(512, 64))
    assert again.cached and again.dtype == c.dtype and again.ms == c.ms
    assert P.lm_head_dtype("auto", shape=(256, 64)).cached is False  # another head, another measurement
    assert P.lm_head_dtype("int8").dtype == "int8" and P.lm_head_dtype("int8").ms == {}
    with pytest.raises(ConfigError):
        P.lm_head_dtype("int4")


def test_auto_skips_bf16_where_the_cpu_emulates_it(monkeypatch, capsys):
    from mmfm.cli.options import say_dtype

    monkeypatch.setattr(P, "native_bf16", lambda: False)
    calls = []
    c = P.choose("auto", lambda p: calls.append(p.name), "sig-avx2")
    assert c.precision.name == "fp32" and calls == [] and "no native bf16" in c.describe()
    assert not P.cache_file().exists()  # nothing measured, nothing cached: a faster host measures
    # asked for bf16, it is measured and given (the user may want it anyway)
    assert P.choose("bf16", lambda p: calls.append(p.name), "sig-avx2").precision.name.startswith("bf16")
    w = P.lm_weights_dtype("auto")
    assert w.dtype == "float32" and w.ms == {} and "no native bf16" in w.describe()
    say_dtype("auto")
    assert "dtype float32" in capsys.readouterr().err


def test_native_bf16_is_what_onednn_reports():
    assert NATIVE_BF16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
