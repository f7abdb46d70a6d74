"""koclip: make Stable Diffusion understand Korean, reproducibly.

One module per stage: corpus, miniworld, train, distill, pipeline, lora, evaluate, bench, serve.
"""

__version__ = "0.1.0"
