"""Curation at scale: wall time, records/s/core and peak memory of ``litflow curate`` at
64k, 256k and 1M pairs, next to the decode + pHash floor measured in the same run.

    .venv/bin/python bench/bench_scale.py --sizes 64000,256000
    .venv/bin/python bench/bench_scale.py [--sizes 64000,256000,1000000] [--presets align,lit-relaxed]
        [--workers 2] [--workers-scaling 256000] [--real] [--floor-samples 20000] [--set SECTION.FIELD=VALUE]

Data: synthetic raw shards shaped like img2dataset's output (``bench/synthetic_shards.py``:
1,000 samples a shard, 9-digit keys, real 64-px JPEG bytes of distinct pictures, img2dataset's
json; Zipf captions, boilerplate, exact copies, a placeholder image, small and odd-aspect
originals, repeated keys, a few empty captions and broken JPEGs, so every rule does work),
made once per (N, seed, generator version) and cached under ``bench/results/scale-data/``
(git-ignored), with the planted counts in its ``DONE`` file.

For each size and preset, ``.venv/bin/litflow curate RAW OUT --preset P --workers W`` runs as
a user runs it (a subprocess, its output in ``OUT.log``). Measured:

* wall time, and records/s/core = inputs / (wall × W);
* CPU seconds of the whole tree (``wait4`` rusage: the process and every descendant it
  reaped) and records per CPU second, which other load on the machine disturbs less;
* peak RSS of the process tree, sampled every 0.2 s with psutil (the litflow process, the
  Beam runner's worker processes and anything they start, summed; shared pages count once
  per process, so this is an upper bound), and of its largest single process;
* peak PSS of the process tree (proportional set size, from ``/proc/PID/smaps_rollup``: a
  page shared by k processes counts 1/k in each), which is what the tree really occupies —
  shared libraries loaded by every worker (numba's LLVM: ~100 MB) count once;
* KB per pair growth of both peaks between consecutive sizes (1 KB = 1,000 bytes);
* the counts per rejection reason from ``OUT/corpus.json``.

The floor, on the first ``--floor-samples`` samples of the same shards: reading the tar
(``curation.shards.read_shard``), then Pillow decode + pHash two ways — *reference*: full
decode + ``imagehash.phash`` (what ``bench/bench_curate.py`` calls the floor; the issue's goal
is on it), and *project*: what ``curation.checks.examine`` runs (reduced JPEG decode under the
hash settings' draft, by ``dedup.jpeg_grey`` for a plain JPEG, the grey pixels kept, and their
pHashes computed 1,000 at a time by ``dedup.phash.phashes_from_grey``, as a raw shard's are).
It is measured *beside each run*: right before and right after it, each time in as many
processes at once as the run has workers (``floor_beside``), and the run is compared with the
mean of the two. Why: this machine's speed drifts by a quarter between minutes, so a floor
taken once per size compared runs with a machine that was no longer there; and a run on
every core meets shared-cache and memory contention that a floor alone on one core does not
(3-7 % here). The floor of one process, once per size (how earlier rounds measured), is
printed beside it (``/ref 1-proc``). Printed: stage records/s/core / floor records/s/core for
each, and the same ratio per CPU second.

``--runner-crossover N,...`` curates the first N pairs in one process and on ``--workers``
worker processes, and prints which ``litflow curate`` chose left to itself.
``--workers-scaling N`` also curates size N with 1 and 2 workers (reusing a 2-worker run of
the main table) and prints the speed-up; ``--real`` runs ``bench/bench_curate.py`` (real
ingested demo samples; its log in ``bench/results/curate.log``) and prints its summary and ratios. Everything goes to
``bench/results/scale.json`` as well as to the table. Curated outputs are deleted after
reading unless ``--keep-outputs``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from bench.synthetic_shards import GENERATOR_VERSION, generate, planted  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SAMPLE_EVERY_S = 0.2


# ---------------------------------------------------------------- measuring a process tree


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def run_measured(command: list[str], log_path: Path) -> dict:
    """Run ``command`` (output to ``log_path``): wall and CPU time, and the peak RSS of its
    process tree (sum and largest process, sampled every 0.2 s)."""
    peak = {"tree": 0, "largest": 0, "processes": 0, "pss": 0}
    stop = threading.Event()
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        root = psutil.Process(proc.pid)
    except psutil.Error:
        root = None

    def sample():
        while root is not None and not stop.is_set():
            total = largest = count = pss = 0
            for p in _tree(root):
                try:
                    rss = p.memory_info().rss
                    pss += p.memory_full_info().pss
                except psutil.Error:
                    continue
                total, largest, count = total + rss, max(largest, rss), count + 1
            peak["tree"], peak["largest"] = max(peak["tree"], total), max(peak["largest"], largest)
            peak["pss"] = max(peak["pss"], pss)
            peak["processes"] = max(peak["processes"], count)
            stop.wait(SAMPLE_EVERY_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of the process and its reaped descendants
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}); {log_path}:\n{tail}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_tree_bytes": peak["tree"],
            "peak_process_bytes": peak["largest"], "peak_tree_pss_bytes": peak["pss"],
            "max_processes": peak["processes"]}


IN_ONE_PROCESS = ["--beam-arg=--direct_running_mode=in_memory", "--beam-arg=--direct_num_workers=1"]


def curate(raw: Path, preset: str, workers: int, sets: list[str], keep: bool, extra: list[str] | None = None,
           tag: str = "") -> dict:
    out = RESULTS / "scale-out" / f"{raw.name}-{preset}-w{workers}{tag}"
    command = [str(ROOT / ".venv" / "bin" / "litflow"), "curate", str(raw), str(out), "--preset", preset,
               "--workers", str(workers), *(extra or [])]
    for item in sets:
        command += ["--set", item]
    out.parent.mkdir(parents=True, exist_ok=True)
    measured = run_measured(command, out.with_name(out.name + ".log"))
    manifest = json.loads((out / "corpus.json").read_text())
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    inputs = manifest["inputs"]
    return {**measured, "preset": preset, "workers": workers, "inputs": inputs, "kept": manifest["kept"],
            "rejected": manifest["rejected"], "records_per_s_per_core": inputs / (measured["wall_s"] * workers),
            "records_per_cpu_s": inputs / measured["cpu_s"] if measured["cpu_s"] else float("nan")}


def runner_crossover(n: int, args) -> dict:
    """One process against ``args.workers`` worker processes on the first ``n`` pairs (whole
    shards of the 64k data, linked into a folder of their own), and what ``litflow curate``
    chooses left to itself (its ``timing.json``): where the bound of
    ``curation.pipeline.IN_PROCESS_MAX_BYTES`` comes from."""
    source = generate(64_000, args.seed, jobs=args.gen_jobs)
    raw = RESULTS / "scale-data" / f"first-{n}-of-{source.name}"
    if not raw.exists():
        tmp = raw.with_name("." + raw.name)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for tar in sorted(source.glob("*.tar"))[: -(-n // 1000)]:
            (tmp / tar.name).symlink_to(tar)
        tmp.rename(raw)
    size = sum(t.stat().st_size for t in raw.glob("*.tar"))
    one = curate(raw, "align", 1, args.set, False, IN_ONE_PROCESS, "-one-process")
    many = curate(raw, "align", args.workers, args.set, False)
    out = RESULTS / "scale-out" / f"{raw.name}-default"
    subprocess.run([str(ROOT / ".venv" / "bin" / "litflow"), "curate", str(raw), str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    chosen = json.loads((out / "timing.json").read_text())["ran"]
    shutil.rmtree(out, ignore_errors=True)
    row = {"pairs": one["inputs"], "raw_bytes": size, "one_process_wall_s": one["wall_s"],
           "workers": args.workers, "worker_processes_wall_s": many["wall_s"], "default_chose": chosen}
    print(f"runner crossover {row['pairs']:>7,} pairs, {size / 2**20:6.1f} MiB: one process {one['wall_s']:5.1f} s, "
          f"{args.workers} worker processes {many['wall_s']:5.1f} s; the default chose: {chosen}", flush=True)
    return row


# ---------------------------------------------------------------- the floor


def floor(raw: Path, limit: int) -> dict:
    """Records/s in one process over the first ``limit`` samples (0 = all): tar read alone,
    then tar read + decode + pHash, reference and project, wall and CPU."""
    import imagehash

    from curation.checks import image_bytes
    from curation.config import load_config
    from curation.decode import ImageRejected, decode_image
    from curation.shards import list_shards, read_shard
    from dedup.phash import DEFAULT_SETTINGS, grey_for_hash, phashes_from_grey

    max_pixels = load_config("align").decode.max_pixels

    def samples():
        n = 0
        for shard in list_shards(raw):
            for sample in read_shard(shard):
                if limit and n >= limit:
                    return
                n += 1
                yield image_bytes(sample)

    def reference(data):
        try:
            imagehash.phash(decode_image(data, max_pixels).image)
        except ImageRejected:
            pass

    greys = []

    def project(data):  # as curation.checks.examine hashes a kept-as-is image: batched, 1,000 at a time
        try:
            decoded = decode_image(data, max_pixels, draft=DEFAULT_SETTINGS.jpeg_draft)
        except ImageRejected:
            return
        greys.append(decoded.grey if decoded.reduced else grey_for_hash(data, DEFAULT_SETTINGS))
        if len(greys) == 1000:
            phashes_from_grey(greys, DEFAULT_SETTINGS)
            greys.clear()

    out = {}
    for name, work in (("tar_read", None), ("reference_decode_imagehash", reference), ("project_decode_phash", project)):
        if work is not None:  # warm: imports and compiled code (numba's) load before the clock starts
            for data in itertools.islice(samples(), 50):
                work(data)
            greys.clear()
        n, wall, cpu = 0, time.perf_counter(), time.process_time()
        for data in samples():
            if work is not None:
                work(data)
            n += 1
        phashes_from_grey(greys, DEFAULT_SETTINGS)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        out[name] = {"records": n, "records_per_s": n / wall, "records_per_cpu_s": n / cpu if cpu else float("nan")}
    return out


def floor_beside(raw: Path, limit: int, processes: int) -> dict:
    """:func:`floor` in ``processes`` processes at once (each its own ``--floor-only`` run of this
    script over the same samples), their rates averaged: the floor per core when as many cores
    are busy as the measured run keeps busy. Measured here on 2 cores, two floors at once run
    3-7 % slower each than one alone (shared cache and memory), so a run on every core is
    compared with a floor under the same load."""
    command = [sys.executable, str(Path(__file__).resolve()), "--floor-only", str(raw), "--floor-samples", str(limit)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, text=True)
             for _ in range(processes)]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {name: {"records": results[0][name]["records"], **_mean_rates([r[name] for r in results])}
            for name in results[0]}


def _mean_rates(floors: list[dict]) -> dict:
    """The mean of each rate of ``floors`` (one phase of :func:`floor` each)."""
    return {rate: sum(f[rate] for f in floors) / len(floors) for rate in ("records_per_s", "records_per_cpu_s")}


def _mean_floor(a: dict, b: dict) -> dict:
    return {name: _mean_rates([a[name], b[name]]) for name in a}


# ---------------------------------------------------------------- the report


def _growth(runs: list[dict]) -> None:
    """KB/pair growth of the peaks between consecutive sizes, per preset and worker count."""
    by_kind: dict[tuple, list[dict]] = {}
    for r in runs:
        by_kind.setdefault((r["preset"], r["workers"]), []).append(r)
    for group in by_kind.values():
        group.sort(key=lambda r: r["pairs"])
        for previous, r in zip(group, group[1:]):
            pairs = r["pairs"] - previous["pairs"]
            if pairs > 0:
                r["kb_per_pair_growth_tree"] = (r["peak_tree_bytes"] - previous["peak_tree_bytes"]) / pairs / 1e3
                r["kb_per_pair_growth_process"] = (r["peak_process_bytes"] - previous["peak_process_bytes"]) / pairs / 1e3
                r["kb_per_pair_growth_pss"] = (r["peak_tree_pss_bytes"] - previous["peak_tree_pss_bytes"]) / pairs / 1e3
                r["growth_from_pairs"] = previous["pairs"]


def _print_table(runs: list[dict]) -> None:
    header = (f"{'pairs':>9} {'preset':<12}{'W':>2}{'wall s':>8}{'rec/s/core':>11}{'rec/cpu-s':>10}{'tree GB':>9}"
              f"{'PSS GB':>8}{'max proc GB':>12}{'KB/pair tree':>13}{'KB/pair PSS':>12}{'KB/pair proc':>13}{'/ref floor':>11}{'/proj floor':>12}"
              f"{'/ref (cpu)':>11}{'/ref 1-proc':>12}{'kept':>9}")
    print("\n" + header)
    print("-" * len(header))
    for r in sorted(runs, key=lambda r: (r["preset"], r["workers"], r["pairs"])):
        tree = f"{r['kb_per_pair_growth_tree']:.2f}" if "kb_per_pair_growth_tree" in r else ""
        proc = f"{r['kb_per_pair_growth_process']:.2f}" if "kb_per_pair_growth_process" in r else ""
        pss = f"{r['kb_per_pair_growth_pss']:.2f}" if "kb_per_pair_growth_pss" in r else ""
        print(f"{r['pairs']:>9,} {r['preset']:<12}{r['workers']:>2}{r['wall_s']:>8.1f}{r['records_per_s_per_core']:>11.0f}"
              f"{r['records_per_cpu_s']:>10.0f}{r['peak_tree_bytes'] / 1e9:>9.2f}"
              f"{r['peak_tree_pss_bytes'] / 1e9:>8.2f}{r['peak_process_bytes'] / 1e9:>12.2f}{tree:>13}{pss:>12}{proc:>13}{r['ratio_reference_floor']:>11.2f}{r['ratio_project_floor']:>12.2f}"
              f"{r['ratio_reference_floor_cpu']:>11.2f}{r['ratio_reference_floor_one_process']:>12.2f}{r['kept']:>9,}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64000,256000,1000000", help="pairs, comma-separated")
    parser.add_argument("--presets", default="align,lit-relaxed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workers-scaling", type=int, default=None, metavar="N",
                        help="also curate N pairs with 1 and 2 workers and print the speed-up")
    parser.add_argument("--runner-crossover", default="", metavar="N,N,...",
                        help="curate the first N pairs (whole shards of the 64k data) in one process and on --workers "
                        "worker processes, side by side, and say which the default chose (e.g. 2000,4000,8000,16000,32000)")
    parser.add_argument("--real", action="store_true", help="also run bench/bench_curate.py on real demo data")
    parser.add_argument("--real-per-source", type=int, default=1100, help="bench_curate.py --per-source (default 1100)")
    parser.add_argument("--floor-samples", type=int, default=20_000, help="samples the floor reads per size (0 = all)")
    parser.add_argument("--floor-only", metavar="RAW", help="print the floor of the raw shards in RAW as JSON, and stop "
                        "(what floor_beside runs in each process)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gen-jobs", type=int, default=os.cpu_count() or 1, help="processes generating shards")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="passed to every litflow curate run (repeatable)")
    parser.add_argument("--keep-outputs", action="store_true", help="keep the curated folders under bench/results/scale-out")
    parser.add_argument("--out", default=str(RESULTS / "scale.json"))
    args = parser.parse_args()
    if args.floor_only:
        print(json.dumps(floor(Path(args.floor_only), args.floor_samples)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s]
    presets = [p for p in args.presets.split(",") if p]
    print(f"bench_scale: sizes {sizes}, presets {presets}, {args.workers} workers, {os.cpu_count()} cores, "
          f"generator v{GENERATOR_VERSION} seed {args.seed}", flush=True)

    def data(n: int) -> Path:
        started = time.perf_counter()
        raw = generate(n, args.seed, jobs=args.gen_jobs)
        print(f"data {n:,}: {raw} ({time.perf_counter() - started:.1f} s; planted {planted(raw)['planted']})", flush=True)
        return raw

    runs, floors, planted_counts = [], {}, {}

    def measure(n: int, raw: Path, preset: str, workers: int) -> dict:
        before = floor_beside(raw, args.floor_samples, workers)
        r = curate(raw, preset, workers, args.set, args.keep_outputs)
        after = floor_beside(raw, args.floor_samples, workers)
        beside, f = _mean_floor(before, after), floors[n]
        ref = "reference_decode_imagehash"
        r.update(pairs=n, floor_beside_before=before, floor_beside_after=after,
                 ratio_reference_floor=r["records_per_s_per_core"] / beside[ref]["records_per_s"],
                 ratio_project_floor=r["records_per_s_per_core"] / beside["project_decode_phash"]["records_per_s"],
                 ratio_reference_floor_cpu=r["records_per_cpu_s"] / beside[ref]["records_per_cpu_s"],
                 ratio_reference_floor_one_process=r["records_per_s_per_core"] / f[ref]["records_per_s"])
        runs.append(r)
        print(f"{n:>9,} {preset:<12} W={workers} wall {r['wall_s']:7.1f} s  {r['records_per_s_per_core']:6.0f} rec/s/core  "
              f"tree {r['peak_tree_bytes'] / 1e9:5.2f} GB, PSS {r['peak_tree_pss_bytes'] / 1e9:5.2f} GB (largest {r['peak_process_bytes'] / 1e9:4.2f} GB, "
              f"{r['max_processes']} processes)  / ref floor beside {r['ratio_reference_floor']:.2f} (floor {before[ref]['records_per_s']:.0f} "
              f"before, {after[ref]['records_per_s']:.0f} after, {workers} at once; one process once: "
              f"{r['ratio_reference_floor_one_process']:.2f})  kept {r['kept']:,}  "
              f"rejected {dict(sorted(r['rejected'].items()))}", flush=True)
        return r

    def prepare(n: int) -> Path:
        raw = data(n)
        if n not in floors:
            floors[n] = floor(raw, args.floor_samples)
            planted_counts[n] = planted(raw)["planted"]
            f = floors[n]
            print(f"floor {n:,} ({f['tar_read']['records']:,} samples, one process): tar read "
                  f"{f['tar_read']['records_per_s']:.0f}/s; + decode + imagehash.phash "
                  f"{f['reference_decode_imagehash']['records_per_s']:.0f}/s; + project decode + pHash "
                  f"{f['project_decode_phash']['records_per_s']:.0f}/s", flush=True)
        return raw

    for n in sizes:
        raw = prepare(n)
        for preset in presets:
            measure(n, raw, preset, args.workers)

    crossover = []
    for n in [int(x) for x in args.runner_crossover.split(",") if x]:
        crossover.append(runner_crossover(n, args))

    scaling = None
    if args.workers_scaling:
        n = args.workers_scaling
        raw = prepare(n)
        scaling = {"pairs": n}
        for preset in presets:
            by_workers = {}
            for workers in (1, 2):
                done = [r for r in runs if r["pairs"] == n and r["preset"] == preset and r["workers"] == workers]
                by_workers[workers] = done[0] if done else measure(n, raw, preset, workers)
            speedup = by_workers[1]["wall_s"] / by_workers[2]["wall_s"]
            scaling[preset] = {"one_worker_wall_s": by_workers[1]["wall_s"], "two_workers_wall_s": by_workers[2]["wall_s"],
                               "speedup": speedup}
            print(f"1 -> 2 workers at {n:,} {preset}: {by_workers[1]['wall_s']:.1f} s -> {by_workers[2]['wall_s']:.1f} s, "
                  f"speed-up {speedup:.2f}x", flush=True)

    real = None
    if args.real:
        real_out = RESULTS / "curate.json"
        log = RESULTS / "curate.log"
        with open(log, "w") as handle:  # Beam logs a lot: kept in the log, its summary printed
            done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_curate.py"), "--per-source",
                                   str(args.real_per_source), "--workers", str(args.workers), "--out", str(real_out)],
                                  stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        lines = log.read_text(errors="replace").splitlines()
        if done.returncode != 0:
            raise RuntimeError(f"bench/bench_curate.py failed ({done.returncode}); {log}:\n" + "\n".join(lines[-40:]))
        start = max((i for i, line in enumerate(lines) if line.startswith("Curation benchmark:")), default=len(lines) - 12)
        print("\n".join(lines[start:]), flush=True)
        report = json.loads(real_out.read_text())
        real = {k: report[k] for k in ("records", "workers", "preset", "pipeline_wall_s", "whole_stage_records_per_s_per_core",
                                       "ratio_to_floor", "default_ran", "default_ratio_to_floor") if k in report}
        real["floor_decode_phash"] = report["records_per_s_per_core"]["floor_decode_phash"]

    _growth(runs)
    _print_table(runs)
    for n, f in floors.items():
        print(f"floor at {n:,}: tar read {f['tar_read']['records_per_s']:.0f}, decode + imagehash.phash "
              f"{f['reference_decode_imagehash']['records_per_s']:.0f}, project decode + pHash "
              f"{f['project_decode_phash']['records_per_s']:.0f} records/s/core")
    if scaling:
        for preset in presets:
            print(f"workers 1 -> 2 at {scaling['pairs']:,} {preset}: speed-up {scaling[preset]['speedup']:.2f}x")
    if real:
        print(f"real demo data ({real['records']:,} samples, bench/bench_curate.py): whole stage / floor "
              f"{real['default_ratio_to_floor']:.2f} as litflow curate runs by default ({real['default_ran']}), "
              f"{real['ratio_to_floor']:.2f} on {real['workers']} worker processes")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "command": sys.argv, "cores": os.cpu_count(), "workers": args.workers, "generator_version": GENERATOR_VERSION,
        "seed": args.seed, "sets": args.set, "runs": runs, "floors": {str(k): v for k, v in floors.items()},
        "planted": {str(k): v for k, v in planted_counts.items()}, "workers_scaling": scaling, "real": real,
        "runner_crossover": crossover,
    }, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
