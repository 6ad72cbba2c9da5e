"""kernelkit.data: the pipeline from encoded images to model-ready batches.

decode (thread pool, DCT-scaled to the crop) -> one fused preprocess per ragged batch -> the
handoff (pinned buffers and a copy stream on CUDA), prefetched so batch i + 1 is prepared while
the model runs batch i. `Loader` runs it standalone with threads; `Samples` + `Collate` run it
inside a torch DataLoader.
"""

from .decode import dct_scale, decode, read_source
from .loader import Loader
from .sample import Decoded, load_sample
from .synthetic import make_jpegs
from .timing import StageTimes
from .torch_adapter import Collate, Samples

__all__ = ["Loader", "Samples", "Collate", "StageTimes", "Decoded", "load_sample", "decode",
           "read_source", "dct_scale", "make_jpegs"]
