"""The ``inpaint-fast`` command line.

    inpaint-fast bench --quick                       # both ops, small sweep, < 3 min on 2 CPU cores
    inpaint-fast bench --op attention --mode fwd --sizes 256 512 1024 --dtype bf16 --device cuda
    inpaint-fast train --model pic --data DIR --out runs/pic            # PIC's recipe, 1 GPU
    torchrun --nproc_per_node 8 -m inpaint_fast.cli train --model dfnet --data DIR --out runs/dfnet \
        --vgg-weights vgg16.pth                                          # DFNet's recipe, 8 GPUs
    inpaint-fast inpaint --model pic --checkpoint runs/pic/checkpoints/step_00100000.pt \
        --image x.png --mask m.png --out results --samples 10

Every subcommand is a pair ``add_<name>_parser(subparsers)`` / ``run_<name>(args) -> int``
registered in ``COMMANDS``; heavy imports happen inside ``run_<name>`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["main", "build_parser", "COMMANDS"]

from inpaint_fast.bench.destination import COMMITTED_CSV, DEFAULT_CSV  # where ``bench`` writes results


def _split(values: Optional[Sequence[str]]) -> Optional[List[str]]:
    """``--x a b,c`` -> [a, b, c]; None stays None."""
    if values is None:
        return None
    return [v for item in values for v in item.split(",") if v]


# ---------------------------------------------------------------------------------------------
# bench


def add_bench_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help="benchmark the ops against the reference (ms, TFLOP/s or GB/s, peak memory)",
        description=(
            "Benchmark inpaint_fast's ops against the eager reference and the PyTorch baselines. "
            "Every provider is first checked against the reference on the same inputs; a wrong one "
            "is reported and not timed. Results are printed as a table and upserted into a CSV: by "
            f"default {DEFAULT_CSV} under the current directory (git-ignored in the repository), with "
            f"--save the repository's committed {COMMITTED_CSV} (the reference results), with --csv PATH "
            "any file. Progress is a bar on a terminal and one line per case otherwise. Exit status 1 if a "
            "provider failed the correctness gate, 2 for a bad argument."
        ),
    )
    _one_line_errors(p)
    p.add_argument("--op", default="all", help="attention | fusion_block | all (default: all)")
    p.add_argument("--mode", nargs="+", metavar="MODE",
                   help="fwd, bwd, fwd+bwd; the fusion block also takes eval-/train- prefixes "
                        "(a bare mode means both). Default: the sweep's modes")
    p.add_argument("--dtype", nargs="+", metavar="DTYPE", help="fp32 bf16 fp16 fp64 (default: per device)")
    p.add_argument("--sizes", nargs="+", metavar="S",
                   help="input image sides in pixels: attention runs at N = (S/8)^2 positions, the fusion "
                        "block on an S x S image (default: per device)")
    p.add_argument("--levels", nargs="+", metavar="K", help="fusion block: DFNet levels 0..5 (default: per device)")
    p.add_argument("--channels", nargs="+", metavar="Cq:C:Cp",
                   help="attention: channel triples, e.g. 32:128:128 16:64:0 (Cp = 0: no pre); every size runs "
                        "each (default: PIC's 32:128:128, plus a general channel sweep at 512 in full runs)")
    p.add_argument("--batch", type=int,
                   help="batch size (default: attention keeps B*N constant; fusion block 1 on CPU, 6 on CUDA)")
    p.add_argument("--providers", nargs="+", metavar="NAME",
                   help="reference cpu triton cuda auto compile sdpa flex (default: reference + this package's "
                        "backends available on the device; on CUDA also sdpa, and compile/flex without --quick)")
    p.add_argument("--quick", action="store_true", help="a small sweep with short timings (the README's first run)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    p.add_argument("--csv", metavar="PATH",
                   help=f"results CSV to upsert into (default: {DEFAULT_CSV} under the current directory)")
    p.add_argument("--save", action="store_true",
                   help=f"upsert into the repository's committed {COMMITTED_CSV}, replacing its rows of this "
                        "device; only from the repository root, and refused while other processes load the "
                        "CPUs (see --force)")
    p.add_argument("--no-csv", action="store_true", help="do not write results")
    p.add_argument("--force", action="store_true",
                   help="write into the committed CSV even though other processes are running on the CPUs "
                        "(each row's note says so)")
    p.add_argument("--min-run-time", type=float, metavar="SEC", help="CPU: seconds of measurement per result")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    return p


def _destination(args):
    """The :class:`inpaint_fast.bench.destination.Destination` that --save / --csv / --no-csv choose
    (None: write nothing); ValueError names the flag."""
    from inpaint_fast.bench.destination import choose_destination

    return choose_destination(args.save, args.csv, args.no_csv)


def _ints(option: str, values: Optional[Sequence[str]], minimum: int) -> Optional[Tuple[int, ...]]:
    """``["256", "512,1024"]`` -> (256, 512, 1024); None stays None; ValueError names ``option``."""
    if not values:
        return None
    out = []
    for item in _split(values):
        if not item.isdigit() or int(item) < minimum:
            raise ValueError(f"{option}: expected integers >= {minimum}, got {item!r}")
        out.append(int(item))
    return tuple(out)


def _channel_triples(values: Sequence[str]) -> Tuple[Tuple[int, int, int], ...]:
    """``["32:128:128", "16:64:0"]`` -> ((32, 128, 128), (16, 64, 0)); ValueError names a bad one."""
    triples = []
    for item in _split(values):
        parts = item.split(":")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"--channels: expected Cq:C:Cp with non-negative integers, got {item!r}")
        triples.append(tuple(int(p) for p in parts))
    return tuple(triples)


def _select_ops(name: str) -> list:
    """The op benchmarks ``--op`` names (``all``: every op)."""
    from inpaint_fast.bench import OPS, get_op
    from inpaint_fast.bench.op_bench import one_of

    if name == "all":
        return list(OPS.values())
    try:
        return [get_op(name)]
    except KeyError:
        expected = one_of([b.aliases[0] for b in OPS.values()] + ["all"])
        raise ValueError(f"--op: unknown op {name!r}; expected {expected}") from None


def _requested_providers(values: Optional[Sequence[str]], benches: list) -> Optional[List[str]]:
    """``--providers``, checked against the selected ops' providers (None: the defaults)."""
    from inpaint_fast.bench.op_bench import one_of
    from inpaint_fast.bench.results import provider_key

    requested = _split(values)
    if not requested:
        return None
    known = sorted({n for b in benches for n in b.providers()}, key=provider_key)
    unknown = [n for n in requested if n not in known]
    if unknown:
        of = f" of {benches[0].kernel}" if len(benches) == 1 else ""
        names = ", ".join(map(repr, unknown))
        raise ValueError(f"--providers: {names}: unknown provider{of}; expected {one_of(known)}")
    return requested


def plan_bench(args, device) -> List[Tuple[object, list, tuple, tuple]]:
    """(op bench, cases, modes, providers) for every selected op; ValueError names a bad option."""
    from inpaint_fast.bench.op_bench import with_sweep_overrides

    benches = _select_ops(args.op)
    requested_providers = _requested_providers(args.providers, benches)
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch: expected an integer >= 1, got {args.batch}")
    plan = []
    for bench in benches:
        sweep = with_sweep_overrides(
            bench.default_sweep(device, args.quick),
            sizes=_ints("--sizes", args.sizes, 1),
            dtypes=tuple(_split(args.dtype)) if args.dtype else None,
            levels=_ints("--levels", args.levels, 0),
            channels=_channel_triples(args.channels) if args.channels else None,
            batch=args.batch,
        )
        try:
            modes = bench.resolve_modes(_split(args.mode) if args.mode else sweep.modes)
        except ValueError as exc:
            raise ValueError(f"--mode: {exc}") from None
        if requested_providers:
            providers = tuple(n for n in requested_providers if n in bench.providers())
        else:
            providers = bench.default_providers(device, args.quick)
        if providers:
            plan.append((bench, bench.cases(sweep, device), modes, providers))
    return plan


def _bench_device(args):
    """The torch device ``--device`` names (default: cuda when available); ValueError when it cannot run."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: cuda is not available here (torch.cuda.is_available() is False: no GPU, or a "
                         "CPU-only build of torch); expected cpu")
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _timing_config(args):
    from inpaint_fast.bench import TimingConfig

    config = TimingConfig.quick() if args.quick else TimingConfig()
    if args.min_run_time is None:
        return config
    if not args.min_run_time > 0:
        raise ValueError(f"--min-run-time: expected a positive number of seconds, got {args.min_run_time}")
    return dataclasses.replace(config, min_run_time=args.min_run_time)


def _busy_cpus() -> int:
    """How many other runnable tasks share the CPUs right now (:func:`inpaint_fast.bench.env.busy_cpus`)."""
    from inpaint_fast.bench.env import busy_cpus

    return busy_cpus()


def _run_plan(plan, device, config, seed: int) -> list:
    """Every result of ``plan``, with progress on the terminal or as lines (inpaint_fast.bench.progress);
    on the CPU also the GEMM ceiling, sampled before every timed result, which is set against the
    ceiling around it (inpaint_fast.bench.ceilings)."""
    from inpaint_fast.bench import run
    from inpaint_fast.bench.ceilings import GemmCeiling
    from inpaint_fast.bench.progress import progress

    runs = sum(len(cases) * len(modes) * len(provs) for _, cases, modes, provs in plan)
    case_modes = sum(len(cases) * len(modes) for _, cases, modes, _ in plan)
    ceiling = GemmCeiling.for_run(device, config) if plan else None
    results = []
    with progress(runs, case_modes) as (bar, on_case):
        for bench, cases, modes, providers in plan:
            results += run(bench, cases, modes, providers, device, config, progress=bar, on_case=on_case, seed=seed,
                           ceiling=ceiling)
    if ceiling is None:
        return results
    gemm = ceiling.result()
    ceiling.attach(results)
    return results + [gemm]


def _save(dest, results, env) -> None:
    from inpaint_fast.bench import results_to_rows
    from inpaint_fast.bench.results import upsert_rows

    n = upsert_rows(dest.path, results_to_rows(results, env))
    where = f"results upserted into {dest.path} ({n} rows)"
    if dest.option == "default":
        where += f"; --save writes the committed {COMMITTED_CSV} instead"
    print(where)


def run_bench(args) -> int:
    from inpaint_fast.bench.destination import refuse_noisy_reference
    from inpaint_fast.bench.env import environment
    from inpaint_fast.bench.report import format_table

    try:
        device = _bench_device(args)
        plan = plan_bench(args, device)
        config = _timing_config(args)
        dest = _destination(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env = environment(device)
    print(f"device: {env['device_name']} | torch {env['torch_version']} | commit {env['commit']}", flush=True)
    busy = _busy_cpus() if device.type == "cpu" else 0
    if busy:
        print(f"warning: {busy} other process(es) are running on this machine's {os.cpu_count()} CPUs; "
              "CPU timings will be slow and noisy (torch's threads wait on each other)", file=sys.stderr)
    try:  # before the run: minutes of noisy timings would be thrown away anyway
        refuse_noisy_reference(dest, busy, os.cpu_count(), args.force)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    results = _run_plan(plan, device, config, args.seed)
    if busy:  # keep the caveat with the numbers
        for r in results:
            r.note = "; ".join(filter(None, [r.note, f"{busy} other processes were running at the start"]))
    print(format_table(results))
    print(f"{len(results)} results in {time.perf_counter() - start:.1f} s")
    if dest is not None:
        _save(dest, results, env)
    wrong = [r for r in results if r.status == "wrong"]
    if wrong:
        print(f"{len(wrong)} result(s) failed the correctness gate", file=sys.stderr)
    return 1 if wrong else 0


def _or_user_error(fn: Callable, arg):
    """``fn(arg)``, or None after printing ``error: ...`` as one line for a UsageError, the type
    ``train`` and ``inpaint`` raise for bad arguments and unusable files. Any other exception is a
    bug and keeps its traceback."""
    from inpaint_fast.training.errors import UsageError

    try:
        return fn(arg)
    except UsageError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return None


def _one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` report a malformed command line as one ``error: ...`` line and exit 2, like
    every other user error of the command (argparse's default also prints the usage block)."""

    def error(message: str):
        parser.exit(2, f"error: {message}; see {parser.prog} --help\n")

    parser.error = error
    return parser


MASK_FILES_HELP = (
    "white (255) = hole, black (0) = known, grey = partly known (pic: any pixel touched by a hole is a hole; "
    "dfnet keeps grey as a soft value); --invert-mask reads files that mark the known pixels white instead "
    "(DFNet's released masks)"
)


# ---------------------------------------------------------------------------------------------
# train


def add_train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train PIC or DFNet on a folder of images (multi-GPU through torchrun)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train PIC or DFNet with the papers' recipes (every default below can be overridden).\n\n"
            "  pic:   Adam lr 1e-4, betas (0.0, 0.999) for E+G and for D+D_rec; per step one E+G forward,\n"
            "         a D step on both discriminators, then a G/E step with them frozen; batch 8, 256x256,\n"
            "         masks 'pic' (regular or irregular, 50/50), PIC's resize-crop-flip-rotate.\n"
            "  dfnet: Adam lr 2e-4, default betas (the original recipe; the authors' later code base used\n"
            "         --optimizer adamw --lr 2e-3), batch 6, 512x512, masks 'free_form', resize + flip;\n"
            "         loss: multi-scale L1 + VGG16 perceptual/style (+ TV), needs --vgg-weights.\n\n"
            "Multi-GPU / multi-node: launch with torchrun (e.g. torchrun --nproc_per_node 8 -m inpaint_fast.cli\n"
            "train ...); --batch is per process. Output: OUT/metrics.jsonl, OUT/samples/step_*.png,\n"
            "OUT/checkpoints/step_*.pt (atomic; --resume auto continues bit-identically on CPU). An existing\n"
            "--out must be empty unless --resume continues the run in it or --overwrite replaces it.\n\n"
            "Mask files (--masks DIR): white (255) = hole, black (0) = known, grey = partly known; pic\n"
            "binarises them (any pixel touched by a hole is a hole) and flips/rotates/crops them as PIC does,\n"
            "dfnet keeps grey as soft values. --invert-mask: files that mark the known pixels white."
        ),
    )
    _one_line_errors(p)
    p.add_argument("--model", required=True, choices=("pic", "dfnet"))
    p.add_argument("--data", required=True, metavar="DIR", help="folder of training images (searched recursively)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (metrics, samples, checkpoints); new or empty, unless --resume or --overwrite")
    p.add_argument("--size", type=int, metavar="S",
                   help="training crop side (pic: multiple of 32, >= 96, default 256; "
                        "dfnet: multiple of 256, default 512)")
    p.add_argument("--batch", type=int, metavar="B", help="batch size per process (default: pic 8, dfnet 6)")
    p.add_argument("--steps", type=int, default=100_000, metavar="N",
                   help="optimisation steps in total (default 100000)")
    p.add_argument("--lr", type=float, help="learning rate (default: pic 1e-4, dfnet 2e-4)")
    p.add_argument("--lr-d", type=float, help="pic: learning rate of the discriminators (default: --lr)")
    p.add_argument("--optimizer", choices=("adam", "adamw"), default="adam",
                   help="dfnet: adam (original recipe) or adamw (the authors' later recipe, with --lr 2e-3)")
    p.add_argument("--masks", metavar="SPEC",
                   help="center | regular | irregular | pic | free_form | a folder of mask files: "
                        f"{MASK_FILES_HELP} (default: pic 'pic', dfnet 'free_form')")
    p.add_argument("--invert-mask", action="store_true",
                   help="the --masks files mark the KNOWN pixels white and the holes black")
    p.add_argument("--tv", choices=("released", "intended"), default="released",
                   help="dfnet: TV term on the targets as released (a constant: no TV) or on the results")
    p.add_argument("--vgg-weights", metavar="PATH",
                   help="dfnet (required): torchvision VGG16 ImageNet state dict saved with torch.save")
    p.add_argument("--amp", choices=("off", "fp16", "bf16"), default="off",
                   help="mixed precision (default off); bf16 on a CPU without AVX512-BF16/AMX is emulated and "
                        "slower than fp32 (a warning says so)")
    p.add_argument("--backend", metavar="NAME", help="inpaint_fast backend: auto reference cpu triton cuda")
    p.add_argument("--compile", action="store_true", help="wrap the networks in torch.compile")
    workers = default_workers()
    p.add_argument("--workers", type=int, default=workers, metavar="W",
                   help=f"data-loading processes per training process (default: min(4, CPUs per process - 1), "
                        f"at least 0: {workers} here)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data order, augmentation and masks")
    p.add_argument("--log-every", type=int, default=10, metavar="K",
                   help="metrics.jsonl row every K steps (default 10)")
    p.add_argument("--sample-every", type=int, default=1000, metavar="K", help="sample grid every K steps (0: never)")
    p.add_argument("--ckpt-every", type=int, default=5000, metavar="K",
                   help="checkpoint every K steps (0: only at the end; one is always written at the last step)")
    p.add_argument("--keep-ckpts", type=int, default=3, metavar="N", help="keep the N newest checkpoints (0: all)")
    p.add_argument("--resume", metavar="PATH|auto",
                   help="continue from a checkpoint; 'auto' = the latest under --out (a fresh start if none)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in a used --out: first delete its checkpoints/, samples/ and metrics.jsonl "
                        "(other files stay; under torchrun rank 0 deletes, the others wait)")
    p.add_argument("--device", help="cpu | cuda | cuda:K (default: cuda if available; under torchrun cuda:LOCAL_RANK)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers() -> int:
    """DataLoader workers per training process: min(4, CPUs per process - 1), at least 0.

    The training process needs a core of its own, and more workers than cores only contend (and
    make PyTorch's DataLoader warn). Under torchrun, LOCAL_WORLD_SIZE processes share the node.
    """
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(0, min(4, _usable_cpus() // processes - 1))


def _check_train_kernel_limits(args) -> bool:
    """--size and --batch against the index and launch limits of the kernels that will run
    (inpaint_fast/models/sizes.py, :func:`inpaint_fast.inpaint.check_kernel_limits`), before any data
    is read or anything is built; True when they fit. Whatever else is wrong (a --size that breaks
    the network's own rule, a bad --batch, --device or --backend) is left to ``prepare``, which
    reports it as before."""
    import torch

    from inpaint_fast.inpaint import check_kernel_limits
    from inpaint_fast.models.sizes import dfnet_size_problem, pic_size_problem
    from inpaint_fast.training.distributed import parse_device
    from inpaint_fast.training.errors import UsageError
    from inpaint_fast.training.run import MODEL_DEFAULTS

    defaults = MODEL_DEFAULTS[args.model]
    size = args.size if args.size is not None else defaults["size"]
    batch = args.batch if args.batch is not None else defaults["batch"]
    rule = pic_size_problem(size, size, training=True) if args.model == "pic" else dfnet_size_problem(size, size)
    if rule or batch < 1:
        return True
    try:
        device = parse_device(args.device)
    except UsageError:
        return True
    dtype = {"off": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp, torch.float32)
    # PIC's generator decodes both paths at once: 2 x --batch images per attention call.
    check_kernel_limits(args.model, size, device, args.backend, batch=batch, batch_option="--batch",
                        per_call=2 if args.model == "pic" else 1, dtype=dtype)
    return True


def run_train(args) -> int:
    from inpaint_fast.training.run import fit, prepare

    if _or_user_error(_check_train_kernel_limits, args) is None:
        return 2
    prepared = _or_user_error(prepare, args)
    if prepared is None:
        return 2
    trainer = _or_user_error(fit, prepared)
    if trainer is None:
        return 2
    if prepared.info.is_main:
        print(f"done: step {trainer.step}, checkpoints in {os.path.join(args.out, 'checkpoints')}")
    return 0


# ---------------------------------------------------------------------------------------------
# inpaint


def add_inpaint_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "inpaint",
        help="complete an image with PIC or DFNet",
        description=(
            f"Complete IMAGE where MASK marks holes. Mask files: {MASK_FILES_HELP}. The mask must have the "
            "image's size (--resize-mask stretches it). Outputs are composited with the known pixels at the "
            "image's own size. PIC writes <stem>_out_<i>.png (i < --samples); DFNet writes <stem>_result.png "
            "(+ _raw, _alpha with --save-raw). The image is resized to the model's size (PIC: multiple of 32, "
            "default 256; DFNet: multiple of 256, default 512; our checkpoints supply their training size) and "
            "the completion back. DFNet's official checkpoints expect BGR input: pass --bgr with them."
        ),
    )
    _one_line_errors(p)
    p.add_argument("--model", required=True, choices=("pic", "dfnet"))
    p.add_argument("--checkpoint", metavar="PATH",
                   help="a checkpoint from inpaint-fast train, or for dfnet an official state dict")
    p.add_argument("--pic-E", metavar="PATH", help="pic: PIC's official <iter>_net_E.pth (with --pic-G)")
    p.add_argument("--pic-G", metavar="PATH", help="pic: PIC's official <iter>_net_G.pth (with --pic-E)")
    p.add_argument("--image", required=True, metavar="IMG")
    p.add_argument("--mask", required=True, metavar="MASK",
                   help="the holes, same size as IMG: white = hole, black = known (see --invert-mask)")
    p.add_argument("--invert-mask", action="store_true",
                   help="the --mask file marks the KNOWN pixels white and the holes black (DFNet's released masks)")
    p.add_argument("--resize-mask", action="store_true",
                   help="stretch a mask of another size to IMG's size (bilinear; pic then re-binarises); without "
                        "it a size mismatch is an error")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    # Accepted only to say what replaced it: scripts that pass it must not run with flipped holes.
    p.add_argument("--mask-convention", help=argparse.SUPPRESS)
    p.add_argument("--samples", type=int, default=1, metavar="K", help="pic: number of completions (default 1)")
    p.add_argument("--deterministic", action="store_true", help="pic: z = mean of the conditional prior")
    p.add_argument("--size", type=int, metavar="S", help="working size of the model")
    p.add_argument("--bgr", action="store_true", help="dfnet: feed BGR (the official checkpoints were run on BGR)")
    p.add_argument("--save-raw", action="store_true", help="dfnet: also write the raw completion and the alpha")
    p.add_argument("--seed", type=int, default=0, help="pic: seed of the latent samples")
    p.add_argument("--backend", metavar="NAME", help="inpaint_fast backend: auto reference cpu triton cuda")
    p.add_argument("--device", help="cpu | cuda | cuda:K (default: cuda if available)")
    return p


def run_inpaint(args) -> int:
    from inpaint_fast.inpaint import run_inpaint as inpaint

    written = _or_user_error(inpaint, args)
    if written is None:
        return 2
    for path in written:
        print(path)
    return 0


# ---------------------------------------------------------------------------------------------
# entry point

# name -> (add the subparser, run it).
COMMANDS: Dict[str, Tuple[Callable, Callable]] = {
    "bench": (add_bench_parser, run_bench),
    "train": (add_train_parser, run_train),
    "inpaint": (add_inpaint_parser, run_inpaint),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inpaint-fast", description="Fused kernels for deep image inpainting.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, _) in COMMANDS.items():
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _one_line_errors(build_parser())
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return COMMANDS[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
