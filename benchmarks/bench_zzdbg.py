import torch
from benchmarks.common import *
def test_x():
    covs = reduction_covariances()
    a = reduction_fast(covs,'cpp'); b = reduction_delve(covs)
    print(torch.get_num_threads()); print(a); print(b)
    assert False
