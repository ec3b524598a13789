"""Measuring speed: throughput side by side and dashboard redraw cost."""
