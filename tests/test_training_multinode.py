"""Multi-node for real: two torchrun "nodes" (1 process each) on 127.0.0.1 over gloo.

The loss and every gradient of the 2-node run equal those of one process on the same
global batch, for both the cached path (Lu) and a trained image tower (Uu); then the real
``embed`` and ``train`` entry points run through ``infra/torchrun/launch.sh`` on 2 nodes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import free_port
from tests.demo_shards import write_demo_shards
from training.embed_cache import embed_shards
from training.image_towers import build_image_tower
from training.metrics import read_metrics
from training.shard_inputs import read_manifest, resolve_shards
from training.text_towers import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 24

WORKER = textwrap.dedent('''
    import json, sys
    import torch
    from training import distributed as D
    from training.data import PairStream
    from training.shard_inputs import resolve_shards
    from training.step import compute_gradients
    from training.train import TrainConfig, build_model

    def gradients(config, tokenizer, global_batch, out):
        info = D.init_from_env(torch.device("cpu"))
        model, _, preprocess, cache = build_model(config, tokenizer, torch.device("cpu"))
        stream = PairStream(resolve_shards(config.shards), global_batch, cache=cache, preprocess=preprocess,
                            shuffle_buffer=1)  # one reader, in order: the same global batch everywhere
        batch = next(iter(stream))
        ids, mask = model.text.tokenize(batch.captions)
        part = slice(info.rank * global_batch // info.world, (info.rank + 1) * global_batch // info.world)
        result = compute_gradients(model, batch.image[part], ids[part], mask[part])
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"loss": result["loss"].detach(), "global_batch": result["global_batch"], "grads": grads},
                   f"{out}-rank{info.rank}.pt")

    if __name__ == "__main__":
        spec = json.loads(sys.argv[1])
        for name, config in spec["configs"].items():
            gradients(TrainConfig(**config), spec["tokenizer"], spec["global_batch"], f"{spec['out']}/{name}")
        # leave the process group cleanly: exiting with gloo threads alive can abort (SIGABRT)
        if torch.distributed.is_initialized():
            D.barrier()
            torch.distributed.destroy_process_group()
''')


@pytest.fixture(scope="module")
def corpus(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("mn")
    shards = write_demo_shards(demo_data.cache, demo_data.catalogue, root / "shards", 3, 16)
    embed_shards(build_image_tower("tiny"), shards, root / "cache", dtype="float32")
    captions = (c for s in shards for c in read_manifest(s, ("caption",))["caption"])
    train_tokenizer(captions, 600, root / "tokenizer.json")
    return root


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _two_nodes(argv_for_node, timeout=240):
    """Start both torchrun nodes, wait for both; fail with their output if either fails."""
    procs = [subprocess.Popen(argv_for_node(rank), cwd=ROOT, env={**_env(), "NODE_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
    return outputs


def _configs(corpus):
    text = {"name": "scratch", "width": 48, "depth": 2, "heads": 2, "vocab_size": 600}
    common = dict(shards=[str(corpus / "shards")], out=str(corpus / "unused"), image_tower="tiny", text=text,
                  image_head=True, precision="fp32")
    return {"Lu": dict(common, mode="Lu", cache=str(corpus / "cache")), "Uu": dict(common, mode="Uu")}


def test_two_nodes_equal_one_process_on_the_global_batch(corpus, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    spec = {"configs": _configs(corpus), "tokenizer": str(corpus / "tokenizer.json"),
            "global_batch": GLOBAL_BATCH}
    (tmp_path / "single").mkdir()
    (tmp_path / "multi").mkdir()
    single = subprocess.run([sys.executable, str(script), json.dumps(spec | {"out": str(tmp_path / "single")})],
                            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-4000:]
    port = free_port()
    _two_nodes(lambda rank: [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                             "--node-rank", str(rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                             "--rdzv-id", "grad-check", str(script),
                             json.dumps(spec | {"out": str(tmp_path / "multi")})])
    for mode in ("Lu", "Uu"):
        reference = torch.load(tmp_path / "single" / f"{mode}-rank0.pt", weights_only=True)
        ranks = [torch.load(tmp_path / "multi" / f"{mode}-rank{r}.pt", weights_only=True) for r in (0, 1)]
        assert reference["global_batch"] == GLOBAL_BATCH
        for result in ranks:
            assert result["global_batch"] == GLOBAL_BATCH  # each rank saw the whole global batch
            torch.testing.assert_close(result["loss"], reference["loss"], rtol=1e-5, atol=1e-6)
            assert result["grads"].keys() == reference["grads"].keys()
            for name, grad in reference["grads"].items():
                torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=f"{mode} {name}")
        if mode == "Uu":
            assert any(n.startswith("image.") for n in reference["grads"])  # the image tower's grads too
        assert reference["grads"]["temperature.log_t"].abs() > 0


def test_launch_script_embeds_and_trains_on_two_nodes(corpus, tmp_path):
    launch = str(ROOT / "infra" / "torchrun" / "launch.sh")
    port = free_port()
    env = {"NNODES": "2", "RDZV_ENDPOINT": f"127.0.0.1:{port}", "PYTHON": sys.executable}

    def node(args, job):
        return lambda rank: ["env", *(f"{k}={v}" for k, v in env.items()), f"JOB_ID={job}", "bash", launch, *args]

    shards = resolve_shards([corpus / "shards"])
    outputs = _two_nodes(node(["embed", str(corpus / "shards"), "--cache", str(tmp_path / "cache"),
                               "--image-tower", "tiny"], "embed"))
    reports = [json.loads(out[out.index("{"): out.rindex("}") + 1]) for out in outputs]
    embedded = sorted(name for r in reports for name in r["embedded"])
    assert embedded == sorted(s.name for s in shards)  # every shard once, split over the ranks
    assert all(r["embedded"] for r in reports) and {r["world"] for r in reports} == {2}

    port = free_port()
    env["RDZV_ENDPOINT"] = f"127.0.0.1:{port}"
    _two_nodes(node(["train", str(corpus / "shards"), "--cache", str(tmp_path / "cache"), "--image-tower", "tiny",
                     "--text-name", "scratch", "--text-width", "48", "--text-depth", "1", "--text-heads", "2",
                     "--text-vocab-size", "600", "--out", str(tmp_path / "run"), "--batch-size", "16", "--steps", "4",
                     "--warmup", "1", "--shuffle-buffer", "8", "--checkpoint-every", "2"], "train"))
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["global_batch"] == 16 for r in rows)
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert payload["step"] == 4 and payload["identity"]["world"] == 2
