"""``macro eval``: evaluations and benchmarks that print figures (and write JSON, markdown and a plot)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from macro.cli.common import ModelOpt, PolicyOpt, err, group, publish
from macro.config import Home

evaluate = group("eval", "Evaluations and benchmarks that print figures.")


@evaluate.command("segmentation")
def eval_segmentation(
    quick: bool = typer.Option(False, "--quick", help="3 volumes per domain instead of 10"),
    n: Optional[int] = typer.Option(None, "--n", help="volumes per domain (overrides --quick)"),
    steps: int = typer.Option(10, help="adaptation steps per volume"),
    out: Path = typer.Option(Path("runs/segmentation"), "--out", help="where the JSON, markdown and plot go"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Dice per domain and region for none / TENT / VISTA on shifted scanners, and seconds per volume."""
    from macro.tools.segmentation.evaluate import evaluate, markdown, write_report

    home = Home.current().ensure()
    count = n or (3 if quick else 10)
    report = evaluate(home.data / "brats-phantom", n=count, steps=steps, progress=err)
    publish(report, out, as_json, write_report, markdown)


@evaluate.command("federated")
def eval_federated(
    quick: bool = typer.Option(False, "--quick", help="smaller federations and fewer rounds (minutes)"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/federated"), "--out", help="where the JSON, markdown and plot go"),
    as_json: bool = typer.Option(False, "--json"),
):
    """FedLSM vs FedAvg baselines under label-set mismatch; FCU vs retrain / fine-tune / gradient ascent."""
    from macro.eval.federated import evaluate, markdown, write_report

    home = Home.current().ensure()
    report = evaluate(home.data, quick=quick, seed=seed, progress=True, log=err)
    publish(report, out, as_json, write_report, markdown)


@evaluate.command("vqa")
def eval_vqa(
    quick: bool = typer.Option(False, "--quick", help="1 500 images and a shorter schedule (minutes)"),
    bench: bool = typer.Option(False, "--bench", help="only time the shipped student: p50/p95 ms per image"),
    threads: int = typer.Option(1, "--threads", help="torch threads for --bench"),
    seed: int = typer.Option(0),
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
    report = evaluate(home.data, quick=quick, seed=seed, log=err)
    publish(report, out, as_json, write_report, markdown)


@evaluate.command("anomaly")
def eval_anomaly(
    quick: bool = typer.Option(False, "--quick", help="smaller stream (minutes)"),
    bench: bool = typer.Option(False, "--bench", help="only time the tool's scoring of 224 x 224 images (p50/p95)"),
    data: Optional[Path] = typer.Option(None, "--data", help="an anomaly stream or a root of MVTec-layout tasks"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/anomaly"), "--out", help="where the JSON, markdown and plot go"),
    as_json: bool = typer.Option(False, "--json"),
):
    """CADIC vs per-task PatchCore, FIFO and joint banks: AUROC per task, forgetting, pixel AUROC, MB, ms/image."""
    from macro.eval import anomaly as anomaly_eval

    if bench:
        result = anomaly_eval.bench(seed=seed)
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
    report = anomaly_eval.evaluate(home.data, quick=quick, seed=seed, progress=True, log=err, source=data)
    publish(report, out, as_json, anomaly_eval.write_report, anomaly_eval.markdown)


@evaluate.command("policy")
def eval_policy(
    policy: str = PolicyOpt,
    model: Optional[str] = ModelOpt,
    n: int = typer.Option(50, "--n"),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json"),
):
    """First-call accuracy on held-out requests (wording never used in SFT training)."""
    from macro.agent.policy import make_policy
    from macro.eval.policy import evaluate_first_calls
    from macro.tools.registry import Registry
    from macro.training import sft_data
    from macro.training.sft import SFTRecipe, training_cases

    home = Home.current().ensure()
    recipe = SFTRecipe(seed=seed)
    registry = Registry.default()
    rows = sft_data.build(training_cases(home, recipe.demo_cases), registry, seed=seed)["test"]
    chat_model, policy_id = make_policy(policy, model=model)
    report = evaluate_first_calls(
        chat_model,
        rows,
        n=n,
        seed=seed,
        registry=registry,
        progress=lambda i, total: err(f"  {i}/{total}") if i % 10 == 0 or i == total else None,
    )
    report["policy"] = policy_id
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"policy {policy_id}: {report['n']} held-out prompts")
    for key in ("parseable", "valid", "right_tool", "valid_right_tool", "exact_args"):
        typer.echo(f"  {key:<17} {report[key]:5.1f} %")
    typer.echo(f"  seconds/prompt    {report['seconds_per_prompt']}")


@evaluate.command("overhead")
def eval_overhead(
    calls: int = typer.Option(40, help="tool calls to time"),
    tokens: bool = typer.Option(True, help="also time the embedded policy's tokens/s"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Agent overhead per tool call (scripted policy vs a direct call) and the embedded policy's tokens/s."""
    from macro.eval.overhead import run_overhead

    report = run_overhead(Home.current().ensure(), calls=calls, tokens=tokens)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    o = report["overhead_ms"]
    typer.echo(f"tool: {report['tool']} on {report['case']} ({report['calls']} calls)")
    typer.echo(f"  direct call      p50 {report['direct_ms']['p50']:.2f} ms  p95 {report['direct_ms']['p95']:.2f} ms")
    typer.echo(f"  through agent    p50 {report['agent_ms']['p50']:.2f} ms  p95 {report['agent_ms']['p95']:.2f} ms")
    typer.echo(f"  overhead/call    p50 {o['p50']:.2f} ms  p95 {o['p95']:.2f} ms")
    if "embedded" in report:
        e = report["embedded"]
        typer.echo(
            f"  embedded policy: {e['decode_tokens_per_s']:.1f} new tokens/s, {e['prefill_tokens_per_s']:.0f} prompt "
            "tokens/s, "
            f"{e['seconds_per_call']:.2f} s per tool call ({e['prompt_tokens']} prompt tokens)"
        )


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
