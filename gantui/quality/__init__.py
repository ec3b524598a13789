"""Is the GAN any good? Sample-quality measurement.

* :mod:`gantui.quality.scores` — FD, KID, classifier score, class histogram, PRDC, accuracy.
* :mod:`gantui.quality.judge` — the MNIST digit judge: a small CNN trained once per machine.
* :mod:`gantui.quality.fid` — Inception FID/KID through the optional ``torch-fidelity``, and
  ``rcfd``, an always-available random-network proxy for image folders.
* :mod:`gantui.quality.evaluate` — :class:`~gantui.quality.evaluate.Evaluator`, which the
  trainer calls to score a generator.
"""
