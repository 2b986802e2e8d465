"""The ``macro`` command line. Bad input exits 2 with one line on stderr; a missing model exits 3.

Progress and streamed steps go to stderr, results to stdout, so ``--json`` output can be piped.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from macro.config import Home
from macro.errors import CaseError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="MACRO: a self-evolving medical imaging agent, offline-first."
)
tools_app = typer.Typer(no_args_is_help=True, help="Registered tools.")
data_app = typer.Typer(no_args_is_help=True, help="Demo and phantom data.")
train_app = typer.Typer(no_args_is_help=True, help="Train policies.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluations and benchmarks that print figures.")
fl_app = typer.Typer(no_args_is_help=True, help="Federated classifiers: train (FedLSM) and forget a site (FCU).")
anomaly_app = typer.Typer(
    no_args_is_help=True, help="Continual anomaly detection (CADIC): one shared memory bank, learnt task by task."
)
app.add_typer(tools_app, name="tools")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(fl_app, name="fl")
app.add_typer(anomaly_app, name="anomaly")
skills_app = typer.Typer(no_args_is_help=True, help="Composite tools mined from verified trajectories.")
app.add_typer(skills_app, name="skills")
memory_app = typer.Typer(no_args_is_help=True, help="Image-feature memory of verified cases.")
app.add_typer(memory_app, name="memory")

PolicyOpt = typer.Option(
    "embedded", "--policy", "-p", help="embedded | hf:PATH | openai:URL | scripted | scripted:PLAN.json"
)
ModelOpt = typer.Option(None, "--model", help="model name for openai:URL (default: $MACRO_OPENAI_MODEL)")
ModalityOpt = typer.Option(None, "--modality", help="override the detected modality (mri-multiseq, mr, ct, xray, ...)")


def _err(message: str) -> None:
    typer.echo(message, err=True)


def guarded(fn):
    """Turn user-facing errors into one line and an exit code instead of a traceback."""
    from macro.agent.local_llm import ModelUnavailable

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CaseError as exc:
            _err(f"error: {exc}")
            raise typer.Exit(2) from None
        except ModelUnavailable as exc:
            _err(f"error: {exc}")
            raise typer.Exit(3) from None

    return wrapper


def _load(case: str, modality: str | None):
    from macro.case import load_case

    sources = case.split(",")
    return load_case(sources if len(sources) > 1 else sources[0], modality=modality)


def _print_step(step) -> None:
    args = ", ".join(f"{k}={v}" for k, v in step.args.items() if v is not None)
    outcome = step.summary if step.ok else f"FAILED: {step.error}"
    _err(f"  -> {step.tool}({args}) [{step.ms:.0f} ms] {outcome}")


def _agent(policy: str, model: str | None, max_steps: int):
    from macro.agent.graph import Agent
    from macro.agent.policy import make_policy

    chat, policy_id = make_policy(policy, model=model)
    return Agent(chat, policy_id, max_steps=max_steps)


@app.command()
@guarded
def ask(
    case: str = typer.Argument(
        ..., help="scan: file, DICOM/BraTS folder, or four comma-separated NIfTI (T1,T1ce,T2,FLAIR)"
    ),
    question: str = typer.Argument(...),
    policy: str = PolicyOpt,
    model: Optional[str] = ModelOpt,
    thread: Optional[str] = typer.Option(None, "--thread", help="continue this thread"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    modality: Optional[str] = ModalityOpt,
    max_steps: int = typer.Option(6, help="tool calls per turn"),
):
    """Ask one question about a scan."""
    scan = _load(case, modality)
    agent = _agent(policy, model, max_steps)
    result = agent.ask(scan, question, thread_id=thread, on_step=_print_step)
    if as_json:
        typer.echo(
            json.dumps(
                {"answer": result.answer, "thread_id": result.thread_id, "trajectory": result.trajectory.to_dict()},
                default=str,
            )
        )
    else:
        typer.echo(result.answer)
        _err(f"thread {result.thread_id}; continue with --thread {result.thread_id}")


@app.command()
@guarded
def chat(
    case: Optional[str] = typer.Argument(None, help="scan to talk about (optional when resuming a thread)"),
    policy: str = PolicyOpt,
    model: Optional[str] = ModelOpt,
    thread: Optional[str] = typer.Option(None, "--thread"),
    modality: Optional[str] = ModalityOpt,
    max_steps: int = typer.Option(6),
):
    """Chat about a scan; the thread persists, so `--thread ID` resumes after a restart. Reads stdin (pipeable)."""
    scan = _load(case, modality) if case else None
    agent = _agent(policy, model, max_steps)
    if scan is None and (thread is None or agent.thread_case(thread) is None):
        raise CaseError(None, "give a scan, or --thread ID of a thread that has one")
    _err(f"thread {thread or '(new)'}; type a question, or /quit")
    while True:
        try:
            line = input("you> ") if sys.stdin.isatty() else sys.stdin.readline()
        except EOFError:
            break
        if not line or line.strip() in ("/quit", "/exit"):
            break
        if not line.strip():
            continue
        result = agent.ask(scan, line.strip(), thread_id=thread, on_step=_print_step)
        thread, scan = result.thread_id, None
        typer.echo(f"macro> {result.answer}")
    if thread:
        _err(f"thread {thread}; resume with: macro chat --thread {thread}")


@tools_app.command("list")
def tools_list(
    as_json: bool = typer.Option(False, "--json"),
    case: Optional[str] = typer.Option(None, help="only tools offered for this scan"),
):
    """List registered tools (with modalities, inputs, outputs, version)."""
    from macro.tools.registry import Registry, kind

    registry = Registry.default()
    tools = registry.for_case(_load(case, None)) if case else registry.all()
    rows = [
        {
            "name": t.name,
            "kind": kind(t),
            "description": t.description,
            "modalities": list(t.spec.modalities),
            "dims": list(t.spec.dims),
            "inputs": t.spec.inputs,
            "outputs": t.spec.outputs,
            "version": t.spec.version,
            "weights": t.spec.weights,
            "arguments": t.tool_call_schema.model_json_schema().get("properties", {}),
        }
        for t in tools
    ]
    if as_json:
        typer.echo(json.dumps({"tools": rows, "problems": registry.problems}, indent=2))
        return
    for r in rows:
        typer.echo(
            f"{r['name']:<20} {r['kind']:<9} {r['version']:<7} {','.join(r['modalities']):<28} {r['description']}"
        )
    for problem in registry.problems:
        _err(f"plug-in skipped: {problem}")


@data_app.command("make")
@guarded
def data_make(
    name: str = typer.Argument(..., help="dataset builder, e.g. brain-mri-demo"),
    out: Path = typer.Option(..., "--out"),
    n: Optional[int] = typer.Option(
        None, "--n", help="number of cases (default 1; anomaly-stream: training images per task, default 60)"
    ),
    seed: int = typer.Option(0, "--seed"),
    domain: Optional[str] = typer.Option(None, "--domain", help="brats-phantom only: source, lowfield or pediatric"),
):
    """Build a deterministic phantom dataset from real anatomy."""
    from macro.data import make

    options = {"domain": domain} if domain else {}
    if n is not None:
        options["n"] = n
    for folder in make(name, out, seed=seed, **options):
        typer.echo(str(folder))


@train_app.command("sft")
def train_sft_cmd(
    out: Optional[Path] = typer.Option(
        None, "--out", help="adapter folder (default: the shipped adapter in the package)"
    ),
    epochs: float = typer.Option(1.0),
    max_steps: int = typer.Option(-1, help="stop early (smoke runs)"),
    seed: int = typer.Option(0),
    eval_prompts: int = typer.Option(50, help="held-out prompts scored after training"),
    base: Optional[Path] = typer.Option(None, help="base model folder (default: the converted embedded SmolLM2)"),
):
    """LoRA SFT cold start of the local policy on tool-use dialogues (TRL SFTTrainer + PEFT)."""
    from macro.agent.local_llm import ADAPTER_DIR, embedded_base
    from macro.training.sft import SFTRecipe, train_sft, training_cases

    home = Home.current().ensure()
    recipe = SFTRecipe(seed=seed, epochs=epochs, max_steps=max_steps, eval_prompts=eval_prompts)
    command = "macro train sft " + " ".join(sys.argv[3:])
    manifest = train_sft(
        out or ADAPTER_DIR,
        recipe,
        base or embedded_base(home),
        training_cases(home, recipe.demo_cases),
        command=command.strip(),
    )
    typer.echo(json.dumps({k: manifest[k] for k in ("name", "sha256", "train", "held_out")}, indent=2))


@train_app.command("segmentation")
def train_segmentation_cmd(
    out: Optional[Path] = typer.Option(
        None, "--out", help="weights folder (default: the shipped weights in the package)"
    ),
    iterations: int = typer.Option(500),
    n_train: int = typer.Option(32),
    seed: int = typer.Option(0),
):
    """Train the source 3D UNet (ET/TC/WT) on source-domain brain phantoms; writes fp16 weights + manifest."""
    from macro.tools.segmentation.model import WEIGHTS_DIR
    from macro.tools.segmentation.train import SegTrainConfig, train_segmentation

    home = Home.current().ensure()
    cfg = SegTrainConfig(iterations=iterations, n_train=n_train, seed=seed)
    command = ("macro train segmentation " + " ".join(sys.argv[3:])).strip()
    manifest = train_segmentation(out or WEIGHTS_DIR, cfg, home.data / "brats-phantom", command=command, progress=True)
    typer.echo(json.dumps({k: manifest[k] for k in ("sha256", "train", "held_out_source_dice")}, indent=2))


@train_app.command("vqa")
@guarded
def train_vqa_cmd(
    out: Optional[Path] = typer.Option(
        None, "--out", help="weights folder (default: the shipped weights in the package)"
    ),
    quick: bool = typer.Option(False, "--quick", help="1 500 images and a shorter schedule (a smoke run)"),
    seed: int = typer.Option(0, help="phantom seed (the training seed is 42, as in the notes)"),
    report_dir: Path = typer.Option(Path("runs/vqa-train"), "--report", help="where the held-out report goes"),
):
    """Train the Step-CoT teacher and student on a seeded stepcot-phantom; writes fp16 weights + manifest."""
    from macro.eval.vqa import run, write_report
    from macro.tools.vqa.checkpoint import WEIGHTS_DIR, ship

    home = Home.current().ensure()
    report, trained = run(home.data, quick=quick, seed=seed, log=_err)
    command = ("macro train vqa " + " ".join(sys.argv[3:])).strip()
    manifest = ship(out or WEIGHTS_DIR, trained, report, command)
    _err("wrote " + ", ".join(map(str, write_report(report, report_dir))))
    typer.echo(json.dumps({"files": manifest["files"], "held_out": manifest["held_out"]}, indent=2))


@eval_app.command("segmentation")
@guarded
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
    report = evaluate(home.data / "brats-phantom", n=count, steps=steps, progress=_err)
    files = write_report(report, out)
    if as_json:
        typer.echo(json.dumps(report))
    else:
        typer.echo(markdown(report))
    _err("wrote " + ", ".join(map(str, files)))


@eval_app.command("federated")
@guarded
def eval_federated(
    quick: bool = typer.Option(False, "--quick", help="smaller federations and fewer rounds (minutes)"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/federated"), "--out", help="where the JSON, markdown and plot go"),
    as_json: bool = typer.Option(False, "--json"),
):
    """FedLSM vs FedAvg baselines under label-set mismatch; FCU vs retrain / fine-tune / gradient ascent."""
    from macro.eval.federated import evaluate, markdown, write_report

    home = Home.current().ensure()
    report = evaluate(home.data, quick=quick, seed=seed, progress=True, log=_err)
    files = write_report(report, out)
    typer.echo(json.dumps(report) if as_json else markdown(report))
    _err("wrote " + ", ".join(map(str, files)))


@eval_app.command("vqa")
@guarded
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
    report = evaluate(home.data, quick=quick, seed=seed, log=_err)
    files = write_report(report, out)
    typer.echo(json.dumps(report) if as_json else markdown(report))
    _err("wrote " + ", ".join(map(str, files)))


@fl_app.command("train")
@guarded
def fl_train(
    task: str = typer.Option(..., "--task", help="derm | cxr"),
    method: str = typer.Option("fedlsm", help="fedlsm | fedavg | fedavg_labelled | pl | pl_ude"),
    rounds: int = typer.Option(50),
    n_images: Optional[int] = typer.Option(None, "--n-images"),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, "--out", help="weights folder (default: the shipped weights of the task)"),
):
    """Train a task's classifier across its sites (each labels only some classes); writes fp16 weights + manifest."""
    from macro.federated.run import train_task

    home = Home.current().ensure()
    command = ("macro fl train " + " ".join(sys.argv[3:])).strip()
    manifest = train_task(task, home.data, out, method, rounds, n_images, seed, command=command)
    typer.echo(
        json.dumps({k: manifest[k] for k in ("sha256", "train", "held_out", "temperature", "test_ece")}, indent=2)
    )


@fl_app.command("unlearn")
@guarded
def fl_unlearn(
    task: str = typer.Option("derm", "--task", help="derm | cxr"),
    client: int = typer.Option(..., "--client", help="site to forget"),
    requested_by: Optional[str] = typer.Option(None, "--requested-by", help="who asked (default: current user)"),
    out: Optional[Path] = typer.Option(
        None, "--out", help="where the new weights go (default: replace the task's weights)"
    ),
):
    """Forget one site's contribution with FCU, without retraining; appends an audit record."""
    from macro.federated.run import unlearn_task

    home = Home.current().ensure()
    record = unlearn_task(task, client, home.data, out=out, requested_by=requested_by)
    typer.echo(json.dumps(record, indent=2))


@anomaly_app.command("learn")
@guarded
def anomaly_learn(
    task: list[Path] = typer.Option(
        [], "--task", help="MVTec-layout task folder (train/good, ...); repeat to learn several in order"
    ),
    stream: Optional[Path] = typer.Option(None, "--stream", help="learn every task of an anomaly stream, in its order"),
    bank: Optional[Path] = typer.Option(None, "--bank", help="bank folder (default: MACRO_HOME/models/anomaly)"),
    reset: bool = typer.Option(False, "--reset", help="start an empty bank instead of extending the current one"),
    capacity: Optional[int] = typer.Option(
        None, help="vectors in a new bank (default: the first task's coreset, 25 % of its patches)"
    ),
    seed: int = typer.Option(0),
):
    """Add tasks to the shared CADIC bank (k-center over bank + new coreset, fixed size); recalibrates the threshold."""
    from tqdm import tqdm

    from macro.artifacts import locked
    from macro.data.anomaly import stream_tasks
    from macro.tools.anomaly.bank import active_bank_dir, load_bank, save_bank
    from macro.tools.anomaly.learn import empty_bank, learn

    folders = [*task, *(stream_tasks(stream) if stream else [])]
    if not folders:
        raise CaseError(None, "give --task DIR (repeatable) or --stream DIR")
    target = bank or Home.current().ensure().models / "anomaly"
    command = ("macro anomaly learn " + " ".join(sys.argv[3:])).strip()
    with locked(target), tqdm(desc="anomaly: images and k-center steps", file=sys.stderr, mininterval=5) as bar:
        current = (
            empty_bank(seed)
            if reset
            else load_bank(target if (target / "manifest.json").is_file() else active_bank_dir())
        )
        learnt, _ = learn(current, folders, capacity, command=command, progress=bar.update)
        manifest = save_bank(learnt, target)
    typer.echo(
        json.dumps(
            {k: manifest[k] for k in ("sha256", "size", "capacity", "megabytes", "threshold", "held_out")}
            | {"tasks": [t["name"] for t in manifest["tasks"]], "bank": str(target)},
            indent=2,
        )
    )


@anomaly_app.command("info")
@guarded
def anomaly_info(as_json: bool = typer.Option(False, "--json")):
    """The active bank: where it is, its tasks, size, threshold and held-out metrics."""
    from macro.tools.anomaly.bank import MANIFEST, active_bank_dir, load_bank

    folder = active_bank_dir()
    load_bank(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    if as_json:
        typer.echo(json.dumps({"bank": str(folder), **manifest}, indent=2))
        return
    typer.echo(
        f"bank {folder}: {manifest['size']}/{manifest['capacity']} vectors, {manifest['megabytes']} MB, "
        f"threshold {manifest['threshold']['value']} (q{manifest['threshold']['quantile']})"
    )
    for t in manifest["tasks"]:
        metrics = manifest.get("held_out", {}).get(t["name"], {})
        typer.echo(f"  {t['name']:<16} {t['modality']:<10} image AUROC {metrics.get('image_auroc', '-')}")


@eval_app.command("anomaly")
@guarded
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
    report = anomaly_eval.evaluate(home.data, quick=quick, seed=seed, progress=True, log=_err, source=data)
    files = anomaly_eval.write_report(report, out)
    typer.echo(json.dumps(report) if as_json else anomaly_eval.markdown(report))
    _err("wrote " + ", ".join(map(str, files)))


@eval_app.command("policy")
@guarded
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
    registry = Registry.default(composites=False)
    rows = sft_data.build(training_cases(home, recipe.demo_cases), registry, seed=seed)["test"]
    chat_model, policy_id = make_policy(policy, model=model)
    report = evaluate_first_calls(
        chat_model,
        rows,
        n=n,
        seed=seed,
        registry=registry,
        progress=lambda i, total: _err(f"  {i}/{total}") if i % 10 == 0 or i == total else None,
    )
    report["policy"] = policy_id
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"policy {policy_id}: {report['n']} held-out prompts")
    for key in ("parseable", "valid", "right_tool", "valid_right_tool", "exact_args"):
        typer.echo(f"  {key:<17} {report[key]:5.1f} %")
    typer.echo(f"  seconds/prompt    {report['seconds_per_prompt']}")


@eval_app.command("overhead")
@guarded
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


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json")):
    """What is installed, which policy backends and weights are available, where MACRO_HOME is."""
    from macro.eval.doctor import report

    info = report(Home.current())
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for section, values in info.items():
        typer.echo(f"{section}:")
        for key, value in values.items() if isinstance(values, dict) else [("", values)]:
            typer.echo(f"  {key:<22} {value}")


@app.command()
@guarded
def demo(policy: str = PolicyOpt, question: str = typer.Option("What is the tumour volume?", "--question")):
    """Build the demo brain MRI (once) and ask the agent about it."""
    from macro.data import demo_case

    home = Home.current().ensure()
    folder = demo_case(home.data)
    truth = json.loads((folder / "truth.json").read_text())
    _err(f"demo case: {folder}")
    _err(f"question: {question}")
    scan = _load(str(folder), None)
    agent = _agent(policy, None, 6)
    result = agent.ask(scan, question, on_step=_print_step)
    typer.echo(result.answer)
    gt = truth["volumes_ml"]
    typer.echo(
        f"\n(phantom ground truth: WT {gt['WT']:.2f} mL, TC {gt['TC']:.2f} mL, ET {gt['ET']:.2f} mL; "
        f"policy {agent.policy_id}; {len(result.trajectory.steps)} tool call(s))"
    )


@eval_app.command("skills")
def eval_skills(
    sizes: str = typer.Option("10000,100000", help="comma-separated trajectory counts"),
    repeats: int = typer.Option(3),
    as_json: bool = typer.Option(False, "--json"),
):
    """Mining time on synthetic logs with planted chains (median of repeats), and whether they were recovered."""
    from macro.eval.skills import mining_benchmark

    report = mining_benchmark(tuple(int(n) for n in sizes.split(",")), repeats, log=_err)
    typer.echo(
        json.dumps(report, indent=2)
        if as_json
        else "\n".join(f"{k}: {v['seconds_median']} s" for k, v in report.items())
    )


@app.command()
@guarded
def bench(
    suite: str = typer.Option("quick", help="quick | full"),
    agents: str = typer.Option(
        ",".join(("static", "react", "react+memory", "react+composites", "react+memory+composites", "macro")),
        help="comma-separated: static, react[+memory][+composites], macro, openai:URL, hf:PATH",
    ),
    llm: Optional[str] = typer.Option(
        None,
        help="the LLM every agent uses: embedded | scripted | hf:PATH | openai:URL "
        "(default: scripted for quick, embedded for full)",
    ),
    families: Optional[str] = typer.Option(
        None, help="comma-separated task families (default: all with their tools registered)"
    ),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds (default: the suite's)"),
    n_eval: Optional[int] = typer.Option(None, "--n-eval", help="tasks per family, split and seed"),
    n_train: Optional[int] = typer.Option(None, "--n-train", help="train tasks per family and seed (experience)"),
    workers: int = typer.Option(1, help="parallel worker processes (each loads its own LLM)"),
    grpo_adapter: Optional[Path] = typer.Option(
        None, "--grpo-adapter", help="LoRA adapter from GRPO training, for the 'macro' agent"
    ),
    out: Path = typer.Option(
        Path("runs/bench"), "--out", help="results, report and the benchmark's own home (resumable)"
    ),
    as_json: bool = typer.Option(False, "--json"),
):
    """MACRO-Bench: static chain vs zero-shot ReAct vs + memory / + composites / full MACRO, held-out and OOD."""
    from tqdm import tqdm

    from macro.eval.bench.report import markdown, write_report
    from macro.eval.bench.run import BenchConfig, run_bench
    from macro.eval.bench.tasks import FAMILIES

    chosen = tuple(families.split(",")) if families else None
    if chosen and (unknown := [f for f in chosen if f not in FAMILIES]):
        raise CaseError(None, f"unknown task families {unknown}", accepted=", ".join(FAMILIES))
    cfg = BenchConfig.for_suite(
        suite,
        families=chosen,
        llm=llm,
        workers=workers,
        n_eval=n_eval,
        n_train=n_train,
        seeds=tuple(int(s) for s in seeds.split(",")) if seeds else None,
    )
    try:
        report = run_bench(
            cfg,
            out,
            agents.split(","),
            str(grpo_adapter) if grpo_adapter else None,
            log=_err,
            progress=lambda **kw: tqdm(file=sys.stderr, **kw),
        )
    except ValueError as exc:
        raise CaseError(None, str(exc)) from None
    files = write_report(report, out)
    typer.echo(json.dumps(report) if as_json else markdown(report))
    _err("wrote " + ", ".join(map(str, files)))


@app.command()
@guarded
def feedback(
    thread: str = typer.Argument(..., help="thread id printed by ask/chat"),
    verdict: str = typer.Argument(..., help="good | bad"),
    note: str = typer.Option("", "--note"),
    all_turns: bool = typer.Option(False, "--all", help="judge every turn, not only the last"),
):
    """Judge a thread's answer: good runs become verified experience (memory, mining), bad ones count as failures."""
    from macro.agent.experience import record_verdict
    from macro.memory.store import ImageMemory
    from macro.trajectory import TrajectoryStore

    if verdict not in ("good", "bad"):
        raise CaseError(None, f"verdict must be good or bad, got {verdict!r}")
    home = Home.current().ensure()
    turns = TrajectoryStore(home.trajectories_db).list(thread_id=thread)
    if not turns:
        raise CaseError(None, f"no recorded turns for thread {thread!r}")
    memory = ImageMemory(home.memory)  # one handle for every turn judged (opening reads nothing until used)
    for traj in turns if all_turns else turns[-1:]:
        done = record_verdict(
            traj.id, "verified" if verdict == "good" else "failed", "person", note, home, memory=memory
        )
        typer.echo(
            f"{done.id}: {done.verification}" + (f" (memory entry {done.embedding_id})" if done.embedding_id else "")
        )


def _skill_parts():
    from macro.skills.evolve import executor_replay
    from macro.skills.library import Library
    from macro.tools.registry import Registry
    from macro.trajectory import TrajectoryStore

    home = Home.current().ensure()
    trajectories = [
        t.to_dict() for t in TrajectoryStore(home.trajectories_db).list(verification=("verified", "failed"))
    ]
    replay = executor_replay(lambda: Registry.default(composites=False), home.artifacts)
    return home, Library(home.skills / "library"), trajectories, replay


def _skill_row(comp) -> dict:
    prov = comp.provenance
    return {
        "name": comp.name,
        "tools": list(comp.tools),
        "params": {k: v.get("default") for k, v in comp.params.items()},
        "support": prov.get("support"),
        "reliability": prov.get("reliability"),
        "score": prov.get("score"),
        "round": prov.get("round"),
        "verification": comp.verification,
        "usage": prov.get("usage"),
    }


@skills_app.command("mine")
@guarded
def skills_mine(
    min_support: int = typer.Option(5, help="verified runs that must contain a chain"),
    as_json: bool = typer.Option(False, "--json"),
):
    """One evolution round: mine candidates, admit those whose replay reproduces the recorded results, prune."""
    from macro.skills.evolve import EvolveConfig, evolve
    from macro.skills.mine import MineConfig

    _, library, trajectories, replay = _skill_parts()
    report = evolve(
        trajectories, library, replay, EvolveConfig(mine=MineConfig(min_support=min_support)), progress=_err
    )
    typer.echo(
        json.dumps(report, indent=2)
        if as_json
        else report["note"] + f"; library round {report['round']}: {', '.join(report['library']) or 'empty'}"
    )


@skills_app.command("list")
@guarded
def skills_list(as_json: bool = typer.Option(False, "--json")):
    """The current library round's composites."""
    _, library, _, _ = _skill_parts()
    current = library.current()
    rows = [_skill_row(c) for c in current.composites]
    if as_json:
        typer.echo(json.dumps({"round": current.number, "composites": rows, "problems": library.problems}, indent=2))
        return
    typer.echo(f"library round {current.number}: {len(rows)} composite(s)")
    for r in rows:
        typer.echo(
            f"  {r['name']:<32} {' -> '.join(r['tools'])}  support {r['support']}, reliability {r['reliability']}"
        )


@skills_app.command("show")
@guarded
def skills_show(
    name: str = typer.Argument(...),
    as_json: bool = typer.Option(True, "--json", help="always JSON; accepted for symmetry"),
):
    """A composite's full definition (steps, bindings, parameters, provenance, verification) as JSON."""
    _, library, _, _ = _skill_parts()
    try:
        typer.echo(json.dumps(library.current().get(name).to_dict(), indent=2))
    except KeyError as exc:
        raise CaseError(None, exc.args[0]) from None


@skills_app.command("verify")
@guarded
def skills_verify(as_json: bool = typer.Option(False, "--json")):
    """Replay every composite of the current round on recorded verified runs; reports, changes nothing."""
    from macro.skills.evolve import replay_all

    _, library, trajectories, replay = _skill_parts()
    report = replay_all(library, trajectories, replay)
    typer.echo(
        json.dumps(report, indent=2)
        if as_json
        else "\n".join(f"{k}: {v['reproduced']}/{v['replayed']} reproduced" for k, v in report.items())
    )


@skills_app.command("prune")
@guarded
def skills_prune(as_json: bool = typer.Option(False, "--json")):
    """Drop composites whose runs are too often judged wrong; commits a new round if anything goes."""
    from macro.skills.evolve import prune_round

    _, library, trajectories, _ = _skill_parts()
    report = prune_round(trajectories, library)
    typer.echo(
        json.dumps(report, indent=2)
        if as_json
        else f"round {report['round']}; pruned: {', '.join(report['pruned']) or 'nothing'}"
    )


@memory_app.command("stats")
@guarded
def memory_stats(as_json: bool = typer.Option(False, "--json")):
    """Entries, dimension, index kind, file size, version and entries per task family."""
    from macro.memory.store import ImageMemory

    info = ImageMemory(Home.current().memory).stats()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(
        f"{info['path']}: {info['entries']} entries, dim {info['dim']}, {info['kind']} index, version "
        f"{info['version']}, {info['bytes']:,} bytes"
    )
    for family, count in sorted(info["families"].items()):
        typer.echo(f"  {family:<22} {count}")


@memory_app.command("query")
@guarded
def memory_query(
    case: str = typer.Argument(
        ..., help="scan: file, DICOM/BraTS folder, or four comma-separated NIfTI (T1,T1ce,T2,FLAIR)"
    ),
    k: int = typer.Option(5, "--k"),
    floor: float = typer.Option(0.0, "--floor", help="lowest cosine similarity returned"),
    family: Optional[str] = typer.Option(None, "--family", help="only entries of this task family"),
    verified: bool = typer.Option(False, "--verified", help="only verified entries"),
    modality: Optional[str] = ModalityOpt,
    as_json: bool = typer.Option(False, "--json"),
):
    """The most similar remembered cases of a scan, with the tool chains that solved them."""
    from macro.memory.encoder import case_embedding
    from macro.memory.store import ImageMemory

    where = {**({"family": family} if family else {}), **({"verification": "verified"} if verified else {})}
    hits = ImageMemory(Home.current().memory).query(
        case_embedding(_load(case, modality)), k=k, floor=floor, where=where or None
    )
    if as_json:
        typer.echo(json.dumps([{"id": h.id, "score": round(h.score, 4), "meta": h.meta} for h in hits], indent=2))
        return
    for h in hits:
        tools = " -> ".join(t["name"] if isinstance(t, dict) else str(t) for t in h.meta.get("tools", []))
        typer.echo(
            f"{h.score:.3f}  {h.meta.get('case_id', h.id)}  [{h.meta.get('family')}, {h.meta.get('verification')}]  "
            f"{tools}"
        )
    if not hits:
        _err("no remembered case above the floor")


@eval_app.command("memory")
def eval_memory(
    sizes: str = typer.Option("10000,100000", help="comma-separated flat memory sizes"),
    large: int = typer.Option(1_000_000, help="vectors for the IVF/HNSW recall benchmark (0 skips it)"),
    queries: int = typer.Option(200),
    as_json: bool = typer.Option(False, "--json"),
):
    """Flat memory query p50/p95 at 10k/100k entries; IVF and HNSW recall@5, latency and build time at 1M vectors."""
    from macro.memory.bench import markdown, run

    report = run(tuple(int(n) for n in sizes.split(",")), large=large, queries=queries, log=_err)
    typer.echo(json.dumps(report, indent=2) if as_json else markdown(report))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
