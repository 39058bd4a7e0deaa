"""The Shapes world: procedural scenes with full ground truth (docs/ARCHITECTURE.md)."""

from mmfm.world.annotate import Annotations, Annotator, interior_points
from mmfm.world.facts import holds, select
from mmfm.world.scene import Obj, Rendered, Scene, render
from mmfm.world.vocab import (
    ALL_PAIRS,
    COLOR_NAMES,
    CONCEPT_NAMES,
    CONCEPTS,
    HELD_OUT_PAIRS,
    SEEN_PAIRS,
    SHAPES,
    UNSEEN_PAIRS,
    class_names,
)
from mmfm.world.world import SPLITS, Episode, Sample, Statement, World

__all__ = [
    "World", "Sample", "Episode", "Statement", "SPLITS", "Scene", "Obj", "Rendered", "render",
    "Annotations", "Annotator", "interior_points", "holds", "select",
    "SHAPES", "COLOR_NAMES", "ALL_PAIRS", "SEEN_PAIRS", "UNSEEN_PAIRS", "HELD_OUT_PAIRS",
    "CONCEPTS", "CONCEPT_NAMES", "class_names",
]
