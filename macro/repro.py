"""What makes an evaluation's figures repeatable: a thread count fixed by the run, not by the environment, and a
record of what else they depend on.

Why fix threads: a CPU reduction may sum in an order that depends on how many threads share it, and training
amplifies last-bit differences over hundreds of steps. With the count fixed inside the run, ``OMP_NUM_THREADS`` cannot
move a figure (tested on ``macro eval federated --quick``); what the seed moves is reported as an interval over
seeds instead.
"""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from typing import Iterator, Sequence

EVAL_THREADS = 2  # the project's reference machine has 2 cores: as fast as it gets there, and the same everywhere


@contextmanager
def fixed_threads(n: int = EVAL_THREADS) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads whatever ``OMP_NUM_THREADS`` says; restore them after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def provenance(seeds: Sequence[int]) -> dict:
    """What a figure depends on besides the code: the seeds, the thread counts and the numerical libraries."""
    import numpy
    import torch

    return {
        "seeds": list(seeds),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }
