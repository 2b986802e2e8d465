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

app = typer.Typer(add_completion=False, no_args_is_help=True, help="MACRO: a self-evolving medical imaging agent, offline-first.")
tools_app = typer.Typer(no_args_is_help=True, help="Registered tools.")
data_app = typer.Typer(no_args_is_help=True, help="Demo and phantom data.")
train_app = typer.Typer(no_args_is_help=True, help="Train policies.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluations and benchmarks that print figures.")
fl_app = typer.Typer(no_args_is_help=True, help="Federated classifiers: train (FedLSM) and forget a site (FCU).")
app.add_typer(tools_app, name="tools")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(fl_app, name="fl")

PolicyOpt = typer.Option("embedded", "--policy", "-p", help="embedded | hf:PATH | openai:URL | scripted | scripted:PLAN.json")
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
def ask(case: str = typer.Argument(..., help="scan: file, DICOM/BraTS folder, or four comma-separated NIfTI (T1,T1ce,T2,FLAIR)"),
        question: str = typer.Argument(...), policy: str = PolicyOpt, model: Optional[str] = ModelOpt,
        thread: Optional[str] = typer.Option(None, "--thread", help="continue this thread"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
        modality: Optional[str] = ModalityOpt, max_steps: int = typer.Option(6, help="tool calls per turn")):
    """Ask one question about a scan."""
    scan = _load(case, modality)
    agent = _agent(policy, model, max_steps)
    result = agent.ask(scan, question, thread_id=thread, on_step=_print_step)
    if as_json:
        typer.echo(json.dumps({"answer": result.answer, "thread_id": result.thread_id, "trajectory": result.trajectory.to_dict()}, default=str))
    else:
        typer.echo(result.answer)
        _err(f"thread {result.thread_id}; continue with --thread {result.thread_id}")


@app.command()
@guarded
def chat(case: Optional[str] = typer.Argument(None, help="scan to talk about (optional when resuming a thread)"),
         policy: str = PolicyOpt, model: Optional[str] = ModelOpt, thread: Optional[str] = typer.Option(None, "--thread"),
         modality: Optional[str] = ModalityOpt, max_steps: int = typer.Option(6)):
    """Chat about a scan; the thread persists, so `--thread ID` resumes after a restart. Reads stdin, so it can be piped."""
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
def tools_list(as_json: bool = typer.Option(False, "--json"), case: Optional[str] = typer.Option(None, help="only tools offered for this scan")):
    """List registered tools (with modalities, inputs, outputs, version)."""
    from macro.tools.registry import Registry

    registry = Registry.default()
    tools = registry.for_case(_load(case, None)) if case else registry.all()
    rows = [{"name": t.name, "kind": "atomic", "description": t.description, "modalities": list(t.spec.modalities), "dims": list(t.spec.dims),
             "inputs": t.spec.inputs, "outputs": t.spec.outputs, "version": t.spec.version, "weights": t.spec.weights,
             "arguments": t.tool_call_schema.model_json_schema().get("properties", {})} for t in tools]
    if as_json:
        typer.echo(json.dumps({"tools": rows, "problems": registry.problems}, indent=2))
        return
    for r in rows:
        typer.echo(f"{r['name']:<20} {r['version']:<7} {','.join(r['modalities']):<28} {r['description']}")
    for problem in registry.problems:
        _err(f"plug-in skipped: {problem}")


@data_app.command("make")
@guarded
def data_make(name: str = typer.Argument(..., help="dataset builder, e.g. brain-mri-demo"), out: Path = typer.Option(..., "--out"),
              n: int = typer.Option(1, "--n", help="number of cases"), seed: int = typer.Option(0, "--seed"),
              domain: Optional[str] = typer.Option(None, "--domain", help="brats-phantom only: source, lowfield or pediatric")):
    """Build a deterministic phantom dataset from real anatomy."""
    from macro.data import make

    options = {"domain": domain} if domain else {}
    for folder in make(name, out, n=n, seed=seed, **options):
        typer.echo(str(folder))


@train_app.command("sft")
def train_sft_cmd(out: Optional[Path] = typer.Option(None, "--out", help="adapter folder (default: the shipped adapter in the package)"),
                  epochs: float = typer.Option(1.0), max_steps: int = typer.Option(-1, help="stop early (smoke runs)"),
                  seed: int = typer.Option(0), eval_prompts: int = typer.Option(50, help="held-out prompts scored after training"),
                  base: Optional[Path] = typer.Option(None, help="base model folder (default: the converted embedded SmolLM2)")):
    """LoRA SFT cold start of the local policy on tool-use dialogues (TRL SFTTrainer + PEFT)."""
    from macro.agent.local_llm import ADAPTER_DIR, embedded_base
    from macro.training.sft import SFTRecipe, train_sft, training_cases

    home = Home.current().ensure()
    recipe = SFTRecipe(seed=seed, epochs=epochs, max_steps=max_steps, eval_prompts=eval_prompts)
    command = "macro train sft " + " ".join(sys.argv[3:])
    manifest = train_sft(out or ADAPTER_DIR, recipe, base or embedded_base(home), training_cases(home, recipe.demo_cases), command=command.strip())
    typer.echo(json.dumps({k: manifest[k] for k in ("name", "sha256", "train", "held_out")}, indent=2))


@train_app.command("segmentation")
def train_segmentation_cmd(out: Optional[Path] = typer.Option(None, "--out", help="weights folder (default: the shipped weights in the package)"),
                           iterations: int = typer.Option(500), n_train: int = typer.Option(32), seed: int = typer.Option(0)):
    """Train the source 3D UNet (ET/TC/WT) on source-domain brain phantoms; writes fp16 weights + manifest."""
    from macro.tools.segmentation.model import WEIGHTS_DIR
    from macro.tools.segmentation.train import SegTrainConfig, train_segmentation

    home = Home.current().ensure()
    cfg = SegTrainConfig(iterations=iterations, n_train=n_train, seed=seed)
    command = ("macro train segmentation " + " ".join(sys.argv[3:])).strip()
    manifest = train_segmentation(out or WEIGHTS_DIR, cfg, home.data / "brats-phantom", command=command, progress=True)
    typer.echo(json.dumps({k: manifest[k] for k in ("sha256", "train", "held_out_source_dice")}, indent=2))


@eval_app.command("segmentation")
@guarded
def eval_segmentation(quick: bool = typer.Option(False, "--quick", help="3 volumes per domain instead of 10"),
                      n: Optional[int] = typer.Option(None, "--n", help="volumes per domain (overrides --quick)"),
                      steps: int = typer.Option(10, help="adaptation steps per volume"),
                      out: Path = typer.Option(Path("runs/segmentation"), "--out", help="where the JSON, markdown and plot go"),
                      as_json: bool = typer.Option(False, "--json")):
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
def eval_federated(quick: bool = typer.Option(False, "--quick", help="smaller federations and fewer rounds (minutes)"),
                   seed: int = typer.Option(0),
                   out: Path = typer.Option(Path("runs/federated"), "--out", help="where the JSON, markdown and plot go"),
                   as_json: bool = typer.Option(False, "--json")):
    """FedLSM vs FedAvg baselines under label-set mismatch; FCU vs retrain / fine-tune / gradient ascent."""
    from macro.eval.federated import evaluate, markdown, write_report

    home = Home.current().ensure()
    report = evaluate(home.data, quick=quick, seed=seed, progress=True, log=_err)
    files = write_report(report, out)
    typer.echo(json.dumps(report) if as_json else markdown(report))
    _err("wrote " + ", ".join(map(str, files)))


@fl_app.command("train")
@guarded
def fl_train(task: str = typer.Option(..., "--task", help="derm | cxr"),
             method: str = typer.Option("fedlsm", help="fedlsm | fedavg | fedavg_labelled | pl | pl_ude"),
             rounds: int = typer.Option(50), n_images: Optional[int] = typer.Option(None, "--n-images"), seed: int = typer.Option(0),
             out: Optional[Path] = typer.Option(None, "--out", help="weights folder (default: the shipped weights of the task)")):
    """Train a task's classifier across its sites (each labels only some classes); writes fp16 weights + manifest."""
    from macro.federated.run import train_task

    home = Home.current().ensure()
    command = ("macro fl train " + " ".join(sys.argv[3:])).strip()
    manifest = train_task(task, home.data, out, method, rounds, n_images, seed, command=command)
    typer.echo(json.dumps({k: manifest[k] for k in ("sha256", "train", "held_out", "temperature", "test_ece")}, indent=2))


@fl_app.command("unlearn")
@guarded
def fl_unlearn(task: str = typer.Option("derm", "--task", help="derm | cxr"), client: int = typer.Option(..., "--client", help="site to forget"),
               requested_by: Optional[str] = typer.Option(None, "--requested-by", help="who asked (default: current user)"),
               out: Optional[Path] = typer.Option(None, "--out", help="where the new weights go (default: replace the task's weights)")):
    """Forget one site's contribution with FCU, without retraining; appends an audit record."""
    from macro.federated.run import unlearn_task

    home = Home.current().ensure()
    record = unlearn_task(task, client, home.data, out=out, requested_by=requested_by)
    typer.echo(json.dumps(record, indent=2))


@eval_app.command("policy")
@guarded
def eval_policy(policy: str = PolicyOpt, model: Optional[str] = ModelOpt, n: int = typer.Option(50, "--n"), seed: int = typer.Option(0),
                as_json: bool = typer.Option(False, "--json")):
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
    report = evaluate_first_calls(chat_model, rows, n=n, seed=seed, registry=registry,
                                  progress=lambda i, total: _err(f"  {i}/{total}") if i % 10 == 0 or i == total else None)
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
def eval_overhead(calls: int = typer.Option(40, help="tool calls to time"), tokens: bool = typer.Option(True, help="also time the embedded policy's tokens/s"),
                  as_json: bool = typer.Option(False, "--json")):
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
        typer.echo(f"  embedded policy: {e['decode_tokens_per_s']:.1f} new tokens/s, {e['prefill_tokens_per_s']:.0f} prompt tokens/s, "
                   f"{e['seconds_per_call']:.2f} s per tool call ({e['prompt_tokens']} prompt tokens)")


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
        for key, value in (values.items() if isinstance(values, dict) else [("", values)]):
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
    typer.echo(f"\n(phantom ground truth: WT {gt['WT']:.2f} mL, TC {gt['TC']:.2f} mL, ET {gt['ET']:.2f} mL; "
               f"policy {agent.policy_id}; {len(result.trajectory.steps)} tool call(s))")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
