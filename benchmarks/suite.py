"""One run of the suite: the machine's peak, then one process per precision, then the service over
HTTP, its cache tiers, two replicas sharing Redis, then the scale table on the service's engine in
process, then the peers (one process each, benchmarks/peers.py).

Memory rule: at most one model is in memory at a time. Each precision's model is loaded in its own
spawned process (components and baseline share it); the service, a process of its own, starts only
after the last of them has ended, and so does each service process of the lower cache tiers; the
scale table's process (the service's engine, built as the service builds it) only after the service
has stopped: after, so that the service's start is timed as it would have been without it (an
OpenVINO engine fills its compiled-model cache on a start). The two-replica run is the exception,
two processes at once: on a CPU it runs the tiny model (the plan's `replica_model`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks.baseline import baseline_precision
from benchmarks.cache_hits import goals, measure_memory_tier, run_lower_tiers
from benchmarks.components import PRECISION_NAMES, backend_plan
from benchmarks.http_load import run_http, run_misses, served_stage_means
from benchmarks.isolation import run_isolated
from benchmarks.launcher import ServiceProcess
from benchmarks.machine import device_precisions, load_average, machine_facts, machine_label
from benchmarks.peers import PEERS_PYTHON, PeerJob, run_peers
from benchmarks.plan import Plan
from benchmarks.faults import run_faults
from benchmarks.replicas import run_replicas
from benchmarks.scale import measure_served_scale
from benchmarks.summary import summarize
from benchmarks.workers import PrecisionJob, run_precision_job
from engines.core.hardware import cpu_has_bf16, usable_cpu_count
from engines.core.numerics import choose_numerics
from engines.manifest import Manifest, ManifestError

logger = logging.getLogger(__name__)
SECTIONS = ("components", "baseline", "http", "cache_hits", "int8", "replicas", "faults", "scale", "peers")
PROCESS_FACTS = ("precision", "numerics", "model_fingerprint", "load_seconds", "peak_rss_bytes", "load_average_at_end")


@dataclass(frozen=True)
class Options:
    model: str
    engine: str
    engine_dir: Path
    device: str  # cpu | cuda (resolved)
    plan: Plan
    sections: tuple[str, ...]
    command: str
    presets_dir: Path | None = None
    log_level: str = "INFO"
    vae: str = "full"
    service_precision: str | None = None  # the service's --precision when not the plan's (int8: an int8 build)
    peers_dir: Path = Path("build/peers")  # our checkpoint, reference outputs and the peers' export, kept between runs
    peers_python: Path = PEERS_PYTHON


def run_suite(options: Options) -> dict[str, Any]:
    """Measure everything asked for; a failing section is recorded under "errors" and the run goes on."""
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    device = torch.device(options.device)
    if device.type == "cpu":
        torch.set_num_threads(usable_cpu_count())
    facts = machine_facts()
    service_precision = PRECISION_NAMES[choose_numerics(options.device, options.plan.precision).dtype]
    results: dict[str, Any] = {
        "schema_version": 1,
        "command": options.command,
        "started": started.isoformat(timespec="seconds"),
        "model": options.model,
        "engine": options.engine,
        "vae": options.vae,
        "device": options.device,
        "service_precision": service_precision,
        "sections": list(options.sections),
        "plan": options.plan.as_dict(),
        "machine": facts,
        "machine_label": machine_label(facts),
        "notes": list(options.plan.notes),
        "errors": {},
    }
    _run_model_sections(options, results, service_precision)
    if {"http", "cache_hits"} & set(options.sections):
        _run_service_sections(options, results)
    if "int8" in options.sections:
        _run_int8(options, results)
    if "replicas" in options.sections:
        replica_args = functools.partial(_service_args, options, model=options.plan.replica_model)
        _section(results, "replicas", lambda: run_replicas(replica_args, options.plan))
    if "faults" in options.sections:
        fault_args = functools.partial(_service_args, options, model="tiny")
        _section(results, "faults", lambda: run_faults(fault_args, options.plan.service_ready_timeout_s))
    if "scale" in options.sections:
        _run_scale(options, results)
    if "peers" in options.sections:
        _run_peers(options, results)
    facts["load_average_at_end"] = load_average()
    results["duration_s"] = time.perf_counter() - clock
    results["summary"] = summarize(results)
    return results


def _run_model_sections(options: Options, results: dict[str, Any], service_precision: str) -> None:
    """One spawned process per precision: the baseline's precision first (it counts the FLOPs), then the rest."""
    sections = set(options.sections)
    backends, skipped = backend_plan(options.device, options.engine, cpu_has_bf16())
    results["backends"] = backends
    results["notes"] += skipped
    wanted: list[str] = []
    if "baseline" in sections:
        wanted.append(baseline_precision(torch.device(options.device)))
    if "components" in sections:
        offered = device_precisions(torch.device(options.device)) if options.plan.precision == "auto" else [service_precision]
        wanted += [p for p in offered if any(p in ps for ps in backends.values())]
    results["components"] = []
    results["peak"] = {}
    known: dict[str, dict[str, Any]] = {"flops": {}, "traffic": {}}  # counted once, in the first process
    with tempfile.TemporaryDirectory(prefix="bench-work-") as work_dir:
        for precision in dict.fromkeys(wanted):
            job = PrecisionJob(
                model=options.model,
                precision=precision,
                device=options.device,
                plan=options.plan,
                work_dir=Path(work_dir),
                engine_dir=options.engine_dir,
                presets_dir=options.presets_dir,
                backends=backends,
                known={k: dict(v) for k, v in known.items()},
                baseline="baseline" in sections and precision == baseline_precision(torch.device(options.device)),
                components="components" in sections,
                encode_images="components" in sections and precision == service_precision,
                log_level=options.log_level,
            )
            tasks = [name for name in ("baseline", "components") if getattr(job, name)]
            logger.info("process for %s: %s", precision, ", ".join(tasks))
            try:
                outcome = run_isolated(run_precision_job, job)
            except Exception as exc:  # killed for memory, or it could not load the model
                logger.exception("the %s process failed", precision)
                results["errors"][f"{precision} process"] = f"{exc.__class__.__name__}: {exc}"
                continue
            results.setdefault("processes", []).append({k: v for k, v in outcome.items() if k in PROCESS_FACTS})
            for name, message in outcome["errors"].items():
                results["errors"][f"{name} ({precision})"] = message
            if "baseline" in outcome:
                results["baseline"] = outcome["baseline"]
            if "components" in outcome:
                results["components"] += outcome["components"]["rows"]
                results["notes"] += outcome["components"]["notes"]
                for what, message in outcome["components"]["errors"].items():
                    results["errors"][f"components {what}"] = message
                for name, peak in outcome["components"]["peak"].items():
                    results["peak"].setdefault(name, {**peak, "measured_in": f"the {precision} process"})
                for kind in known:
                    known[kind].update(outcome["components"][kind])
                if outcome["components"]["bandwidth"]:
                    results.setdefault("bandwidth", outcome["components"]["bandwidth"])
    results["flops"], results["traffic"] = known["flops"], known["traffic"]


def _service_args(options: Options, cache_dir: Path | str | None, *extra: str, model: str | None = None) -> list[str]:
    """`python -m service`'s flags in this run: the HTTP sections' services and the scale table's engine
    are all built from them (the scale table's without a cache). `model`, when not the run's, is served
    by torch in fp32, which runs any model (the run's --engine-dir and precision belong to the run's model)."""
    other = model is not None and model != options.model
    args = [
        "--model", model if other else options.model,
        "--engine", "torch" if other else options.engine,
        "--engine-dir", str(options.engine_dir),
        "--vae", options.vae,
        "--device", options.device,
        "--precision", "fp32" if other else options.service_precision or options.plan.precision,
        # Latency is the figure: no request may time out or be refused while the sweep waits its turn.
        "--request-timeout", "86400",
        "--max-queue", "1000",
        *extra,
    ]
    if cache_dir is not None:
        args += ["--cache-dir", str(cache_dir)]
    if options.presets_dir:
        args += ["--presets-dir", str(options.presets_dir)]
    return args


def _run_service_sections(options: Options, results: dict[str, Any]) -> None:
    """Start the service as a user would (fresh cache), time it to /readyz, then the HTTP section and
    its memory-tier hits; then the lower tiers, each in a process of its own over the same cache."""
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache_dir:
        memory = _run_main_service(options, results, cache_dir)
        if memory is not None:
            tiers = [memory, *run_lower_tiers(functools.partial(_service_args, options), Path(cache_dir), options.plan)]
            results["cache_hits"] = {"size": options.plan.size, "tiers": tiers, "goals": goals(tiers, options.plan)}
            for tier in tiers:
                if "error" in tier:
                    results["errors"][f"cache_hits ({tier['name']})"] = tier["error"]


def _run_main_service(options: Options, results: dict[str, Any], cache_dir: str) -> dict[str, Any] | None:
    """The HTTP section and the memory tier's hits on the service as a user starts it; returns the
    memory tier's figures (None when the cache-hit section is not asked for, or the service failed)."""
    info: dict[str, Any] = {"env": {k: v for k, v in os.environ.items() if k.startswith("SDXL_")}}
    results["service"] = info
    found: dict[str, Any] = {}

    def measure(base_url: str) -> None:
        if "http" in options.sections:
            _section(results, "http", lambda: run_http(base_url, options.plan))
            info["stages_s"] = served_stage_means(base_url)
        if "cache_hits" in options.sections:
            found["memory"] = measure_memory_tier(base_url, options.plan)

    _measure_service(_service_args(options, cache_dir), options.plan, info, results, "service", measure)
    return found.get("memory")


def _measure_service(args: list[str], plan: Plan, info: dict[str, Any], results: dict[str, Any], name: str,
                     measure: Any) -> None:
    """Start `python -m service ARGS`, time it to /readyz, run `measure(base_url)`, record its engine,
    peak and final memory in `info`, stop it; a failure is recorded under `name` in the errors."""
    service = ServiceProcess(args)
    info["args"] = args
    try:
        info["seconds_to_ready"] = service.wait_ready(plan.service_ready_timeout_s)
        with urllib.request.urlopen(service.base_url + "/readyz", timeout=10) as response:
            readyz = json.loads(response.read())
        info["engine"], info["engine_reason"] = readyz.get("engine"), readyz.get("engine_reason")
        measure(service.base_url)
        info["peak_rss_bytes"] = service.peak_rss_bytes()
        info["memory_at_end_bytes"] = service.memory_bytes()
        info["load_average_at_end"] = load_average()
    except Exception as exc:
        logger.exception("the %s could not be measured", name)
        results["errors"][name] = f"{exc.__class__.__name__}: {exc}"
    finally:
        info["exit_code"] = service.stop()
        if info["exit_code"] != 0:
            results["errors"][f"{name} exit"] = f"exit code {info['exit_code']}; log tail:\n{service.log()[-2000:]}"


def int8_build(engine_dir: Path) -> dict[str, Any] | None:
    """The int8 build's details in `engine_dir` (how it was made, its image error), None without one."""
    try:
        manifest = Manifest.read(engine_dir)
    except (ManifestError, OSError):
        return None
    unet = manifest.components.get("unet")
    return None if unet is None or unet.openvino_int8 is None else dict(unet.openvino_int8.details)


def _run_int8(options: Options, results: dict[str, Any]) -> None:
    """The --engine-dir's int8 build served over HTTP, in a service of its own after the float one:
    its start, cache misses at concurrency 1, its memory, and the build's image error against float."""
    build = int8_build(options.engine_dir)
    if build is None:
        results["notes"].append(f"int8: no int8 build in {options.engine_dir} (`make bench` makes one with --precision int8)")
        return
    info: dict[str, Any] = {"build": build}
    results["int8"] = info

    def measure(base_url: str) -> None:
        info["misses"] = run_misses(base_url, options.plan)
        info["stages_s"] = served_stage_means(base_url)

    with tempfile.TemporaryDirectory(prefix="bench-cache-int8-") as cache_dir:
        args = _service_args(replace(options, service_precision="int8"), cache_dir)
        _measure_service(args, options.plan, info, results, "int8 service", measure)


def _run_scale(options: Options, results: dict[str, Any]) -> None:
    """The scale table in a process of its own, on the engine the service serves with."""
    _section(results, "scale", lambda: run_isolated(measure_served_scale, _service_args(options, None), options.plan, options.log_level))
    if "scale" in results:
        results.setdefault("processes", []).append(results["scale"].pop("process"))


def _run_peers(options: Options, results: dict[str, Any]) -> None:
    """The peers after everything of ours has ended: one model in memory at a time."""
    if options.device != "cpu":
        results["notes"].append("peers: not run on a GPU: they are CPU pipelines (OpenVINO)")
        return
    plan = options.plan
    job = PeerJob(options.model, plan.size, plan.peer_warmup, plan.peer_repeats, options.peers_dir, options.peers_python,
                  options.presets_dir, options.log_level)
    _section(results, "peers", lambda: run_peers(job))


def _section(results: dict[str, Any], name: str, run: Any) -> None:
    try:
        results[name] = run()
    except Exception as exc:
        logger.exception("section %s failed", name)
        results["errors"][name] = f"{exc.__class__.__name__}: {exc}"
