"""koclip: make Stable Diffusion understand Korean, reproducibly.

One module per stage: corpus, miniworld, generator, train, distill, pipeline, translate, evaluate, serve, loadtest, run.
"""

__version__ = "0.1.0"

import logging

# a library logs, the application decides where it goes (the CLIs send INFO to stderr: common.cli_logging)
logging.getLogger(__name__).addHandler(logging.NullHandler())
