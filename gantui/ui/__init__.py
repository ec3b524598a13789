"""The Textual dashboard: the only package that imports Textual."""

from __future__ import annotations

from gantui.ui.app import GantuiApp, Outcome
from gantui.ui.picker import RunPicker, pick_run

__all__ = ["GantuiApp", "Outcome", "RunPicker", "pick_run"]
