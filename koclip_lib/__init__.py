"""koclip: make Stable Diffusion understand Korean, reproducibly.

One module per stage: corpus, miniworld, generator, train, distill, pipeline, translate, evaluate, serve, loadtest, run.
"""

__version__ = "0.1.0"
