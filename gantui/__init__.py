"""gantui: a terminal-first GAN trainer and live training monitor."""

__version__ = "0.1.0"
