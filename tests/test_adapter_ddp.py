"""rnncells.torch under DistributedDataParallel: 2 CPU processes (gloo) give the single-process gradients."""

import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from torch.nn.parallel import DistributedDataParallel

    import rnncells.torch as rt

    def data():
        g = torch.Generator().manual_seed(0)
        return torch.randn(6, 8, 3, generator=g, dtype=torch.float64), torch.randn(6, 8, 8, generator=g,
                                                                                 dtype=torch.float64)

    def model():
        torch.manual_seed(0)
        return rt.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)

    def train(m, rank=0, world=1, steps=3):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        x, y = data()
        first = None
        for step in range(steps):
            opt.zero_grad()
            loss = ((m(x[:, rank::world])[0] - y[:, rank::world]) ** 2).mean()
            loss.backward()
            if first is None:
                first = {n: p.grad.clone() for n, p in m.named_parameters()}
            opt.step()
        return first

    def worker(rank, world, init, out):
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
        ddp = DistributedDataParallel(model())
        first = train(ddp, rank, world)
        if rank == 0:
            strip = lambda d: {k.removeprefix("module."): v for k, v in d.items()}
            torch.save({"grads": strip(first), "params": ddp.module.state_dict()}, out)
        # a fixed teardown: every rank done, the reducer freed, then the group (gloo aborted now and then
        # when the reducer outlived the group)
        dist.barrier()
        del ddp
        dist.destroy_process_group()

    if __name__ == "__main__":
        out, init = sys.argv[1], sys.argv[2]
        mp.spawn(worker, args=(2, init, out), nprocs=2)
    """
)


def test_ddp_two_processes_match_one_process(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "ddp.pt"
    r = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "init")], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = torch.load(out)

    sys.path.insert(0, str(tmp_path))
    try:
        import ddp as single  # the same model, data and loop, in this one process on the whole batch
    finally:
        sys.path.remove(str(tmp_path))
    m = single.model()
    first = single.train(m)
    assert set(first) == set(ddp["grads"])
    for k, g in first.items():
        assert (ddp["grads"][k] - g).abs().max() <= 1e-12 * max(g.abs().max(), 1e-300), k
    for k, p in m.state_dict().items():
        assert (ddp["params"][k] - p).abs().max() <= 1e-12, k
