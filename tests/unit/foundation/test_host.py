"""The host description every manifest carries."""


def test_host_probe_leaves_the_global_rng_alone():
    import torch

    from foundation import host

    torch.manual_seed(3)
    want = torch.rand(4)
    torch.manual_seed(3)
    assert host.matmul_gflops(n=64, seconds=0.01) > 0
    assert torch.equal(torch.rand(4), want)
    info = host.describe()
    assert info["torch_threads"] >= 1 and info["cpus"] >= 1 and host.one_line(info).startswith(info["cpu"])
