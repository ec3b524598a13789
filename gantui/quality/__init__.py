"""Is the GAN any good? Sample-quality measurement.

* :mod:`gantui.quality.scores` — FD, KID, classifier score, class histogram, PRDC, accuracy.
* :mod:`gantui.quality.judge` — the judges: small CNNs trained once per data set (the MNIST
  digit judge, and one for any labelled data), with their accuracy and floor.
* :mod:`gantui.quality.fid` — Inception FID/KID through the optional ``torch-fidelity``, and
  ``rcfd``, an always-available random-network proxy for image folders.
* :mod:`gantui.quality.evaluate` — :class:`~gantui.quality.evaluate.Evaluator`, which the
  trainer calls to score a generator.
"""
