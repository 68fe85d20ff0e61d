"""One intra-op thread for the whole suite: the tests run small models, for which a second thread buys
nothing, and on a shared 2-core machine an OpenMP thread waiting for a busy core made a tiny model's forward
100× slower (0.5 s instead of 4 ms). Subprocesses started by tests (torchrun, streamlit) set their own."""

import torch

torch.set_num_threads(1)
