"""The Textual dashboard: the only package that imports Textual."""

from __future__ import annotations

from gantui.ui.app import GantuiApp, Outcome

__all__ = ["GantuiApp", "Outcome"]
