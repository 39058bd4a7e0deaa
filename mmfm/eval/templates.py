"""Prompt templates for zero-shot classification.

OPENAI_IMAGENET_TEMPLATES: the 80 templates of CLIP's ImageNet prompt ensemble (Radford et al. 2021,
as listed in open_clip's zero_shot_metadata). SIMPLE_IMAGENET_TEMPLATES: the 7-template subset CLIP's
authors found best. WORLD_TEMPLATES: the phrasings of the Shapes world's captions; `{a}` is the right
indefinite article for the class name. HELDOUT_WORLD_TEMPLATES: phrasings its captions never use."""

from __future__ import annotations

OPENAI_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

SIMPLE_IMAGENET_TEMPLATES = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
)

# The world's caption phrasings. Size words ("a small {}") are left out on purpose: on the quickstart
# model they pulled class embeddings toward size and cost 3-7 points of top-1.
WORLD_TEMPLATES = ("a photo of {a} {}", "{a} {}", "a picture of {a} {}", "an image of {a} {}", "a drawing of {a} {}")

# Phrasings the world's captions never use (the words are the world's, the sentences are not): what
# ImageNet's templates are to CLIP's web captions, to measure whether an ensemble helps where no single
# template matches the training text.
HELDOUT_WORLD_TEMPLATES = (
    "there is {a} {} in the picture", "the {}", "{a} {} object", "the image contains {a} {}", "one {} in the image",
    "look at the {}", "this is {a} {}", "{a} {} on a dark background", "a close-up of {a} {}", "{a} {} shape",
)

TEMPLATE_SETS = {
    "openai": OPENAI_IMAGENET_TEMPLATES,
    "simple": SIMPLE_IMAGENET_TEMPLATES,
    "world": WORLD_TEMPLATES,
    "world-heldout": HELDOUT_WORLD_TEMPLATES,
}


def fill(template: str, name: str) -> str:
    a = "an" if name[:1].lower() in "aeiou" else "a"
    return template.replace("{a}", a).replace("{}", name)
