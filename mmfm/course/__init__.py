"""The course's claims, measured on the world models and written up as one report (`mmfm course report`)."""

from mmfm.course.claims import CLAIMS, Claim, Context, Result, Row
from mmfm.course.report import build_report, markdown_table

__all__ = ["CLAIMS", "Claim", "Context", "Result", "Row", "build_report", "markdown_table"]
