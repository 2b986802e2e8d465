"""``macro eval``: evaluations and benchmarks that print figures (and write JSON, markdown and a plot)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from macro.cli.common import ModelOpt, PolicyOpt, err, group, parse_seeds, publish
from macro.config import Home

evaluate = group("eval", "Evaluations and benchmarks that print figures.")
SEEDS_HELP = "comma-separated seeds (default: 0,1,2; with --quick: 0)"


def _seeds(text: str | None, quick: bool) -> tuple[int, ...]:
    """Full runs report over three seeds by default (an interval needs more than one); quick checks take one."""
    return parse_seeds(text) if text else ((0,) if quick else (0, 1, 2))


@evaluate.command("segmentation")
def eval_segmentation(
    quick: bool = typer.Option(False, "--quick", help="3 volumes per domain instead of 10"),
    n: Optional[int] = typer.Option(None, "--n", help="volumes per domain (overrides --quick)"),
    steps: int = typer.Option(10, help="adaptation steps per volume"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help=SEEDS_HELP),
    out: Path = typer.Option(Path("runs/segmentation"), "--out", help="where the JSON, markdown and plot go"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Dice per domain and region for none / TENT / VISTA on shifted scanners, and seconds per volume; means over
    test streams (seeds) with 95 % intervals."""
    from macro.tools.segmentation.evaluate import evaluate, markdown, write_report

    home = Home.current().ensure()
    count = n or (3 if quick else 10)
    chosen = _seeds(seeds, quick)
    report = evaluate(home.data / "brats-phantom", n=count, steps=steps, progress=err, seeds=chosen)
    publish(report, out, as_json, write_report, markdown)


@evaluate.command("federated")
def eval_federated(
    quick: bool = typer.Option(False, "--quick", help="smaller federations and fewer rounds (minutes)"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help=SEEDS_HELP),
    out: Path = typer.Option(Path("runs/federated"), "--out", help="where the JSON, markdown and plot go"),
    as_json: bool = typer.Option(False, "--json"),
):
    """FedLSM vs FedAvg baselines under label-set mismatch; FCU vs retrain / fine-tune / gradient ascent. Means over
    seeds with 95 % intervals."""
    from macro.eval.federated import evaluate, markdown, write_report

    home = Home.current().ensure()
    chosen = _seeds(seeds, quick)
    report = evaluate(home.data, quick=quick, seeds=chosen, progress=True, log=err)
    publish(report, out, as_json, write_report, markdown)


@evaluate.command("vqa")
def eval_vqa(
    quick: bool = typer.Option(False, "--quick", help="1 500 images and a shorter schedule (minutes)"),
    bench: bool = typer.Option(False, "--bench", help="only time the shipped student: p50/p95 ms per image"),
    threads: int = typer.Option(1, "--threads", help="torch threads for --bench"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help=SEEDS_HELP),
    out: Path = typer.Option(Path("runs/vqa"), "--out", help="where the JSON, markdown and plot go"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Step-CoT: per-step, diagnosis and consistency accuracy of baseline / teacher / student, and ms per image."""
    if bench:
        from macro.eval.vqa import bench_shipped

        timing = bench_shipped(threads=threads)
        typer.echo(
            json.dumps(timing)
            if as_json
            else f"student, 1 image, encoder included: p50 {timing['p50']} ms, p95 {timing['p95']} ms "
            f"({timing['runs']} runs, {timing['threads']} threads)"
        )
        return
    from macro.eval.vqa import evaluate, markdown, write_report

    home = Home.current().ensure()
    report = evaluate(home.data, quick=quick, seeds=_seeds(seeds, quick), log=err)
    publish(report, out, as_json, write_report, markdown)


@evaluate.command("anomaly")
def eval_anomaly(
    quick: bool = typer.Option(False, "--quick", help="smaller stream (minutes)"),
    bench: bool = typer.Option(False, "--bench", help="only time the tool's scoring of 224 x 224 images (p50/p95)"),
    data: Optional[Path] = typer.Option(None, "--data", help="an anomaly stream or a root of MVTec-layout tasks"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help=SEEDS_HELP + "; --bench draws from the first"),
    out: Path = typer.Option(Path("runs/anomaly"), "--out", help="where the JSON, markdown and plot go"),
    as_json: bool = typer.Option(False, "--json"),
):
    """CADIC vs per-task PatchCore, FIFO and joint banks: AUROC per task, forgetting, pixel AUROC, MB, ms/image."""
    from macro.eval import anomaly as anomaly_eval

    if bench:
        result = anomaly_eval.bench(seed=_seeds(seeds, True)[0])
        typer.echo(
            json.dumps(result)
            if as_json
            else f"score_anomaly scoring, {result['images']} images 224x224: "
            f"p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms "
            f"(bank {result['bank_size']} vectors, {result['torch_threads']} torch threads, load "
            f"{result['load_average_1min']})"
        )
        return
    home = Home.current().ensure()
    chosen = _seeds(seeds, quick)
    report = anomaly_eval.evaluate(home.data, quick=quick, seeds=chosen, progress=True, log=err, source=data)
    publish(report, out, as_json, anomaly_eval.write_report, anomaly_eval.markdown)


@evaluate.command("policy")
def eval_policy(
    policy: str = PolicyOpt,
    model: Optional[str] = ModelOpt,
    requests: Optional[Path] = typer.Option(None, help="JSONL of held-out requests (default: the hand-written set)"),
    compare: bool = typer.Option(True, help="local backends: also decode without the grammar, for comparison"),
    episodes: bool = typer.Option(True, help="also run each request as a whole agent turn"),
    as_json: bool = typer.Option(False, "--json"),
):
    """First calls and whole episodes on hand-written held-out requests (six users' styles, every atomic tool)."""
    import tempfile

    from macro.agent.graph import Agent
    from macro.agent.local_llm import coverage_warning, untrained_tools
    from macro.agent.policy import make_policy
    from macro.eval.policy import REQUESTS, Cases, evaluate_episodes, evaluate_first_calls, load_requests
    from macro.tools.registry import Registry

    home = Home.current().ensure()
    registry = Registry.default()
    rows = load_requests(requests or REQUESTS)
    cases = Cases(home.data / "policy-eval")
    local = policy.startswith(("embedded", "hf:"))
    report: dict = {"requests": str(requests or REQUESTS.name), "n": len(rows)}
    if policy.startswith("embedded") and (line := coverage_warning(untrained_tools(registry))):
        err(line)

    def tick(label: str):
        return lambda i, total: err(f"  {label} {i}/{total}") if i % 10 == 0 or i == total else None

    for mode in ("constrained", "unconstrained") if local and compare else ("constrained" if local else "server",):
        chat, policy_id = make_policy(policy, model=model, constrained=mode != "unconstrained")
        report.setdefault("policy", policy_id)
        report[mode] = {"first_call": evaluate_first_calls(chat, rows, cases, registry, tick(f"{mode} first calls"))}
        if episodes and mode != "unconstrained":
            with tempfile.TemporaryDirectory(prefix="macro-eval-policy-") as scratch:  # keeps the user's memory clean
                agent = Agent(chat, policy_id, registry=registry, home=Home(Path(scratch)), memory=False)
                report[mode]["episodes"] = evaluate_episodes(agent, rows, cases, tick("episodes"))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"policy {report['policy']}: {len(rows)} held-out requests ({report['requests']})")
    for mode, part in ((k, v) for k, v in report.items() if isinstance(v, dict)):
        first = part["first_call"]
        d = first["decision_seconds"]
        typer.echo(f"{mode}: decision p50 {d['p50']} s, p95 {d['p95']} s")
        typer.echo(f"  {'tool':<20} {'n':>3} {'parse':>6} {'valid':>6} {'tool':>6} {'args':>6}")
        for tool, r in [*first["per_tool"].items(), ("all", first)]:
            cells = " ".join(f"{r[k]:5.1f}%" for k in ("parseable", "valid", "right_tool", "exact_args"))
            typer.echo(f"  {tool:<20} {r['n']:>3} {cells}")
        ci = ", ".join(f"{k} [{lo:.1f}, {hi:.1f}]" for k, (lo, hi) in first["ci"].items())
        typer.echo(f"  95 % intervals over the requests (Wilson): {ci}")
        styles = ", ".join(f"{s} {r['right_tool']:.0f}/{r['exact_args']:.0f}" for s, r in first["per_style"].items())
        typer.echo(f"  by style (right tool / exact args %): {styles}")
        if "episodes" in part:
            e = part["episodes"]
            typer.echo(
                f"  episodes: {e['clean']:.1f} % clean [{e['clean_ci'][0]:.1f}, {e['clean_ci'][1]:.1f}] (answer, no "
                "failed/repeated call, no guard stop); "
                f"{e['failed_calls']} failed, {e['repeated_calls']} repeated, {e['guard_stops']} guard stops; "
                f"episode p50 {e['episode_seconds']['p50']} s, p95 {e['episode_seconds']['p95']} s"
            )


@evaluate.command("overhead")
def eval_overhead(
    calls: int = typer.Option(40, help="tool calls to time"),
    tokens: bool = typer.Option(True, help="also time the embedded policy (decisions and whole turns)"),
    episodes: int = typer.Option(12, help="whole embedded-policy turns to time"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Agent overhead per tool call (scripted policy vs a direct call) and the embedded policy's seconds per
    decision and per turn."""
    from macro.eval.overhead import run_overhead

    report = run_overhead(Home.current().ensure(), calls=calls, tokens=tokens, episodes=episodes)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    o = report["overhead_ms"]
    typer.echo(f"tool: {report['tool']} on {report['case']} ({report['calls']} calls)")
    typer.echo(f"  direct call      p50 {report['direct_ms']['p50']:.2f} ms  p95 {report['direct_ms']['p95']:.2f} ms")
    typer.echo(f"  through agent    p50 {report['agent_ms']['p50']:.2f} ms  p95 {report['agent_ms']['p95']:.2f} ms")
    typer.echo(f"  overhead/call    p50 {o['p50']:.2f} ms  p95 {o['p95']:.2f} ms")
    c = report["agent_cached_ms"]
    typer.echo(f"  agent, cached    p50 {c['p50']:.2f} ms  p95 {c['p95']:.2f} ms  (result from the tool cache)")
    if "embedded" in report:
        e = report["embedded"]
        typer.echo(
            f"  embedded policy: {e['seconds_per_call']:.2f} s per tool call ({e['prompt_tokens']} prompt tokens, "
            f"{e['new_tokens']:.0f} new tokens in {e['forward_passes']:.0f} forward passes of "
            f"{e['ms_per_forward_pass']:.0f} ms), grammar {e['grammar_ms_per_token']:.2f} ms per token"
        )
        d, t = e["decision_seconds"], e["episode_seconds"]
        typer.echo(f"  per decision     p50 {d['p50']:.2f} s  p95 {d['p95']:.2f} s  ({e['decisions']} requests)")
        typer.echo(f"  per turn         p50 {t['p50']:.2f} s  p95 {t['p95']:.2f} s  ({e['episodes']} whole turns)")


@evaluate.command("skills")
def eval_skills(
    sizes: str = typer.Option("10000,100000", help="comma-separated trajectory counts"),
    repeats: int = typer.Option(3),
    as_json: bool = typer.Option(False, "--json"),
):
    """Mining time on synthetic logs with planted chains (median of repeats), and whether they were recovered."""
    from macro.eval.skills import mining_benchmark

    report = mining_benchmark(tuple(int(n) for n in sizes.split(",")), repeats, log=err)
    typer.echo(
        json.dumps(report, indent=2)
        if as_json
        else "\n".join(f"{k}: {v['seconds_median']} s" for k, v in report.items())
    )


@evaluate.command("memory")
def eval_memory(
    sizes: str = typer.Option("10000,100000", help="comma-separated flat memory sizes"),
    large: int = typer.Option(1_000_000, help="vectors for the IVF/HNSW recall benchmark (0 skips it)"),
    queries: int = typer.Option(200),
    as_json: bool = typer.Option(False, "--json"),
):
    """Flat memory query p50/p95 at 10k/100k entries; IVF and HNSW recall@5, latency and build time at 1M vectors."""
    from macro.memory.bench import markdown, run

    report = run(tuple(int(n) for n in sizes.split(",")), large=large, queries=queries, log=err)
    typer.echo(json.dumps(report, indent=2) if as_json else markdown(report))


@evaluate.command("ood")
def eval_ood(
    n: int = typer.Option(200, "--n", help="held-out in-distribution images per model"),
    out: Path = typer.Option(Path("runs/ood"), "--out", help="where the JSON, markdown and plot go"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Out-of-distribution checks: AUROC at telling each model's held-out images from the wheels' scans and noise."""
    from macro.eval.ood import evaluate as run
    from macro.eval.ood import markdown, write_report

    report = run(Home.current().ensure().data, n_in=n, log=err)
    publish(report, out, as_json, write_report, markdown)


@evaluate.command("real-scans")
def eval_real_scans(
    as_json: bool = typer.Option(False, "--json"),
    pin: Optional[Path] = typer.Option(None, "--pin", help="write the per-file verdicts here (CI's pinned table)"),
):
    """Every scan in the pydicom, nibabel and nilearn wheels through every tool that accepts it: the verdicts."""
    from macro.eval.real_scans import markdown, sweep

    report = sweep(log=err)
    if pin is not None:
        pin.parent.mkdir(parents=True, exist_ok=True)
        pin.write_text(json.dumps(report["verdicts"], indent=1, sort_keys=True) + "\n")
        err(f"wrote {pin}")
    typer.echo(json.dumps(report, indent=2) if as_json else markdown(report))
