"""CLIP's claims (zero-shot, prompt ensembles, bag of words) and SimCLR next to it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mmfm.course.claims.base import Context, Result, Row
from mmfm.course.stats import bootstrap, fmt, paired, wilson
from mmfm.vision.plot import bar_plot, line_plot


def _features(ctx: Context, split: str, n: int):
    """Normalized image features (n, D) and labels of a split's classification set, encoded once a run."""
    key = ("features", split, n)
    if key not in ctx.cache:
        from mmfm.eval.clip_world import classification_set
        from mmfm.eval.zeroshot import encode_images

        x, y = classification_set(ctx.clip(), split, n, seed=ctx.seed)
        ctx.cache[key] = (F.normalize(encode_images(ctx.clip(), x).float(), dim=-1), y)
    return ctx.cache[key]


def _classify(ctx: Context, templates, split: str, n: int):
    """Per-image correctness (templates, n) of each single template and of their ensemble (n,). Every
    template x class text is encoded once; the ensemble is CLIP's (mean of normalized embeddings,
    normalized: what build_classifier computes)."""
    from mmfm.eval.templates import fill
    from mmfm.eval.zeroshot import encode_texts
    from mmfm.world import class_names

    model, classes = ctx.clip(), class_names()
    f, y = _features(ctx, split, n)
    emb = encode_texts(model, model.tokenizer, [fill(t, c) for t in templates for c in classes]).float()
    emb = F.normalize(emb.view(len(templates), len(classes), -1), dim=-1)  # (T, C, D)
    single = ((f @ emb.transpose(1, 2)).argmax(-1) == y).float().numpy()  # (T, n)
    ens = (f @ F.normalize(emb.mean(0), dim=-1).T).argmax(1) == y
    return single, ens.float().numpy()


def clip_zeroshot(ctx: Context) -> Result:
    from mmfm.eval.clip_world import SINGLE_TEMPLATE

    n = ctx.n(300, 1000)
    seen = _classify(ctx, SINGLE_TEMPLATE, "test", n)[1]
    held = _classify(ctx, SINGLE_TEMPLATE, "heldout", n)[1]
    s, h = bootstrap(seen), bootstrap(held)
    rows = [Row.of("seen compositions, new scenes", s, n), Row.of("held-out compositions (never seen)", h, n)]
    holds = h[1] > 10 / 56 and h[0] >= s[0] - 0.10
    fig = ctx.figure("clip_zeroshot.png", bar_plot({"seen": {"top-1": s}, "held-out": {"top-1": h}}, ylim=(0, 1),
                                                   title="world CLIP zero-shot top-1 (56 classes, chance 0.018)"))
    why = (f"Held-out colour x shape pairs never appear in a training image or caption; CLIP names them at "
           f"{h[0]:.2f} from words it learned on other pairs, {s[0] - h[0]:+.2f} from seen pairs.")
    return Result(rows, holds, why, fig, headline=f"held-out pairs {fmt(h)}; seen pairs {fmt(s)}")


def prompt_ensembles(ctx: Context) -> Result:
    from mmfm.eval.templates import HELDOUT_WORLD_TEMPLATES, OPENAI_IMAGENET_TEMPLATES, WORLD_TEMPLATES

    n = ctx.n(200, 1000)
    sets = {"held-out phrasings": HELDOUT_WORLD_TEMPLATES, "OpenAI's 80": OPENAI_IMAGENET_TEMPLATES,
            "training phrasings": WORLD_TEMPLATES}
    rows, groups, gains = [], {}, {}
    for name, tpls in sets.items():
        single, ens = [], []
        for split in ("test", "heldout"):
            s, e = _classify(ctx, tpls, split, n)
            single.append(s.mean(0))  # per image: the share of single templates that classify it right
            ens.append(e)
        single, ens = np.concatenate(single), np.concatenate(ens)
        ms, me, d = bootstrap(single), bootstrap(ens), paired(ens, single)
        rows += [Row.of(f"{name} ({len(tpls)}): mean single template", ms, len(ens)),
                 Row.of(f"{name}: ensemble", me, len(ens)), Row.of(f"{name}: ensemble - mean single", d, len(ens))]
        groups[name] = {"mean single template": ms, "ensemble": me}
        gains[name] = d
    fig = ctx.figure("prompt_ensembles.png", bar_plot(groups, ylim=(0, 1), ylabel="top-1 (seen + held-out pairs)",
                                                      title="zero-shot with templates CLIP never trained on"))
    holds = gains["held-out phrasings"][1] > 0 and gains["OpenAI's 80"][1] > 0
    trained, held, openai = (gains[k][0] for k in ("training phrasings", "held-out phrasings", "OpenAI's 80"))
    why = ("CLIP's paper gains from ensembling templates because no single phrasing matches its training text. "
           f"Ensemble minus mean single template: {trained:+.3f} on the phrasings this CLIP trained on, "
           f"{held:+.3f} on held-out phrasings, {openai:+.3f} on OpenAI's 80.")
    head = "; ".join(f"{k}: ensemble - mean single {fmt(gains[k])}" for k in ("held-out phrasings", "OpenAI's 80"))
    return Result(rows, bool(holds), why, fig, headline=head)


def bag_of_words(ctx: Context) -> Result:
    from mmfm.eval.compositionality import clip_scorer
    from mmfm.eval.world_compositionality import world_suite

    n = ctx.n(150, 500)
    res = world_suite(clip_scorer(ctx.clip()), n=n, seed=ctx.seed)
    m = {k: wilson(v["accuracy"], v["n"]) for k, v in res.items()}
    rows = [Row.of(k.replace("_", " "), v, res[k]["n"]) for k, v in m.items()]
    swaps = [k for k in ("attribute_swap", "relation_swap", "word_order") if k in m]
    holds = all(abs(m[k][0] - 0.5) <= 0.1 for k in swaps) and m["replace"][1] > 0.7
    plot = bar_plot({k.replace("_", " "): {"accuracy": v} for k, v in m.items()}, ylim=(0, 1),
                    title="world CLIP: the caption vs a hard negative (chance 0.5)")
    fig = ctx.figure("bag_of_words.png", plot)
    why = ("Swapping attributes or relations keeps the caption's words, so a bag-of-words text embedding cannot "
           "tell the pair apart (near 0.5); replacing a word changes the bag, and CLIP sees it.")
    head = ", ".join(f"{k.replace('_', ' ')} {v[0]:.3f}" for k, v in m.items())
    return Result(rows, bool(holds), why, fig, headline=head)


def simclr_vs_clip(ctx: Context) -> Result:
    """Colour x shape probes on frozen features of the same tower trained three ways (SimCLR: two crops,
    no labels; CLIP: captions; random init), with 1, 10 and all labels per class, and CLIP's zero-shot
    (no label at all) on the same test scenes. Per-image correctness, so differences are paired."""
    from mmfm.eval.clip_world import SINGLE_TEMPLATE
    from mmfm.eval.probes import few_shot_indices, fit_probe, world_features
    from mmfm.models.simclr import SimCLR

    n_train, n_test, seed = ctx.n(1000, 6000), ctx.n(300, 1000), ctx.seed
    torch.manual_seed(0)
    towers = {"SimCLR (no labels)": ctx.simclr(), "CLIP image tower (captions)": ctx.clip(),
              "random init": SimCLR(ctx.simclr().config).eval()}
    shots = {"1": 1, "10": 10, "all": None}
    correct = {}
    for name, m in towers.items():
        xtr, ytr = world_features(m, "val", n_train, 0, seed)
        xva, yva = world_features(m, "val", 500, 50_000, seed)
        xte, yte = world_features(m, "test", n_test, 0, seed)
        n_classes = int(max(ytr["color_shape"].max(), yte["color_shape"].max())) + 1
        for k, shot in shots.items():
            idx = few_shot_indices(ytr["color_shape"], shot, seed)
            clf = fit_probe(xtr[idx], ytr["color_shape"][idx], xva, yva["color_shape"], n_classes)
            with torch.no_grad():
                correct[name, k] = (clf(xte).argmax(1) == yte["color_shape"]).float().numpy()
    zs = _classify(ctx, SINGLE_TEMPLATE, "test", n_test)[1]  # the same scenes (world seed, split, index)
    simclr, clip, rand = towers
    m = {key: bootstrap(v) for key, v in correct.items()}
    rows = [Row.of(f"{name}: linear probe, {k} label{'' if k == '1' else 's'} per class", m[name, k], n_test)
            for name in towers for k in shots]
    rows.append(Row.of("CLIP zero-shot (no labels; 56 names)", bootstrap(zs), n_test))
    vs_rand = paired(correct[simclr, "all"], correct[rand, "all"])
    clip_gain = paired(correct[clip, "all"], correct[simclr, "all"])
    zs_gain = paired(zs, correct[simclr, "all"])
    rows += [Row.of("SimCLR probe - random-init probe (all labels)", vs_rand, n_test),
             Row.of("CLIP probe - SimCLR probe (all labels)", clip_gain, n_test),
             Row.of("CLIP zero-shot - SimCLR probe (all labels)", zs_gain, n_test)]
    chance = 1 / 48
    holds = m[simclr, "all"][0] > 5 * chance and vs_rand[1] > 0 and clip_gain[1] > 0 and zs_gain[1] > 0
    per_class = round(n_train / 48)
    series = {name: [(1 if k == "1" else 10 if k == "10" else per_class, m[name, k][0]) for k in shots]
              for name in towers}
    series["CLIP zero-shot"] = [(1, float(zs.mean())), (per_class, float(zs.mean()))]
    fig = ctx.figure("simclr_vs_clip.png", line_plot(series, xlabel="labels per class", ylabel="colour x shape top-1",
                                                     markers=True, log_x=True,
                                                     title="frozen features + a linear probe (chance 0.021)"))
    why = (f"SimCLR's probe reads colour x shape at {m[simclr, 'all'][0]:.3f} ({m[simclr, 'all'][0] / chance:.0f}x "
           f"chance, {vs_rand[0]:+.3f} over the random tower): two crops without a label teach features a probe "
           f"can read. CLIP's captions named colour and shape, so its probe is {clip_gain[0]:+.3f} higher and its "
           f"zero-shot, with no label at all, {zs_gain[0]:+.3f}.")
    head = (f"probe (all labels): SimCLR {fmt(m[simclr, 'all'])}, random init {m[rand, 'all'][0]:.3f}, CLIP "
            f"{m[clip, 'all'][0]:.3f}; CLIP zero-shot {float(zs.mean()):.3f}")
    return Result(rows, bool(holds), why, fig, headline=head)
