"""``macro ui``: the Gradio web UI. Left, the scan and threads; middle, the slice viewer; right, the chat.

Only widgets and their wiring live here; what they do is :class:`macro.ui.workbench.Workbench`. The app binds to
127.0.0.1 unless told otherwise and never opens a public share link. Fonts are the browser's own, so a machine with
no internet loads the page without waiting on a font server.
"""

from __future__ import annotations

import functools
import inspect
import os

from macro.errors import MacroError
from macro.ui.scans import EXAMPLES, UPLOAD_TYPES
from macro.ui.viewer import slice_count, view
from macro.ui.workbench import POLICIES, Session, Workbench

AXES = ["axial", "coronal", "sagittal"]
TITLE = "MACRO: chat about a scan"


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise MacroError("the web UI needs Gradio: pip install 'macro-agent[ui]'") from None
    return gr


def build(bench: Workbench, policy: str = "embedded"):
    """The Blocks app over ``bench``; ``policy`` is the picker's first choice."""
    gr = _gradio()

    def shown(fn):
        """A user-facing error becomes a toast in the page instead of a stack trace."""

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def streaming(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except MacroError as exc:
                    raise gr.Error(str(exc)) from None

            return streaming

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except MacroError as exc:
                raise gr.Error(str(exc)) from None

        return wrapper

    def picture(session: Session, axis, index, channel, chosen, opacity):
        if session.case is None:
            return None, ""
        return _picture(session, axis, index, channel, chosen, opacity)[::2]

    def _picture(session: Session, axis, index, channel, chosen, opacity):
        layers, notes = session.layers(bench.home)
        rgb, shown_index, where = view(
            session.case,
            axis,
            None if index is None else int(index),
            channel or None,
            [layers[n] for n in chosen or [] if n in layers],
            opacity,
        )
        return rgb, shown_index, " · ".join([where, *notes])

    def opened(session: Session, messages: list[dict]):
        """Every widget after a scan or a thread is opened."""
        case = session.case
        layers, _ = session.layers(bench.home)
        names = list(layers)
        three_d = case.dims == 3
        axis = "axial"
        rgb, index, where = _picture(session, axis, None, None, names, 0.45)
        return (
            session,
            f"**{os.path.basename(str(case.paths[0]))}**: {case.summary()}  \nthread `{session.thread_id}`",
            gr.update(value=axis, visible=three_d),
            gr.update(maximum=max(slice_count(case, axis) - 1, 1), value=index, visible=three_d),
            gr.update(choices=[("default", "")] + [(c, c) for c in case.channels], value=""),
            gr.update(choices=names, value=names),
            rgb,
            where,
            session.pictures(bench.home),
            messages,
            gr.update(choices=bench.threads(), value=session.thread_id if messages else None),
        )

    with gr.Blocks(title=TITLE) as app:
        session = gr.State(Session())
        gr.Markdown(f"## {TITLE}\nAnswers cite the tools that produced them; research use only, not for diagnosis.")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                example = gr.Dropdown(list(EXAMPLES), value=None, label="Example scan", elem_id="example")
                upload = gr.File(
                    label="Or upload a scan (NIfTI, DICOM file or zipped series, PNG/JPEG)",
                    file_count="multiple",
                    file_types=UPLOAD_TYPES,
                    elem_id="upload",
                )
                about = gr.Markdown("No scan open.", elem_id="case-summary")
                thread = gr.Dropdown(choices=[], label="Threads (resume one)", elem_id="threads")
                new = gr.Button("New thread on this scan", size="sm")
                policy_pick = gr.Dropdown(
                    [policy, *[p for p in POLICIES if p != policy]],
                    value=policy,
                    allow_custom_value=True,
                    label="Policy (or hf:PATH, openai:URL)",
                    elem_id="policy",
                )
            with gr.Column(scale=2, min_width=360):
                image = gr.Image(label="Viewer", type="numpy", interactive=False, elem_id="viewer", height=440)
                where = gr.Markdown("", elem_id="where")
                with gr.Row():
                    axis = gr.Radio(AXES, value="axial", label="Axis", visible=False)
                    channel = gr.Dropdown(choices=[], label="Sequence / channel")
                index = gr.Slider(0, 1, value=0, step=1, label="Slice", visible=False, elem_id="slice")
                overlays = gr.CheckboxGroup(choices=[], label="Overlays", elem_id="overlays")
                opacity = gr.Slider(0, 1, value=0.45, step=0.05, label="Overlay opacity")
                gallery = gr.Gallery(label="Tool pictures", columns=3, height=180, elem_id="gallery")
            with gr.Column(scale=2, min_width=360):
                chat = gr.Chatbot(label="Chat", height=680, elem_id="chat")
                question = gr.Textbox(
                    placeholder="Ask about the scan, e.g. 'What is the tumour volume?'",
                    show_label=False,
                    elem_id="question",
                )
                with gr.Row():
                    send = gr.Button("Ask", variant="primary", elem_id="ask")
                    good = gr.Button("Good answer", size="sm", elem_id="good")
                    bad = gr.Button("Bad answer", size="sm", elem_id="bad")
                verdict = gr.Markdown("", elem_id="verdict")

        everything = [session, about, axis, index, channel, overlays, image, where, gallery, chat, thread]
        view_inputs = [session, axis, index, channel, overlays, opacity]

        example.select(shown(lambda label: opened(bench.open_example(label), [])), example, everything)
        upload.upload(
            shown(lambda files: opened(bench.open_upload([getattr(f, "name", f) for f in files]), [])),
            upload,
            everything,
        )
        thread.select(shown(lambda tid: opened(*bench.reopen(tid))), thread, everything)
        new.click(
            shown(lambda s: opened(bench.new_thread(s.case), []) if s.case else (gr.skip(),) * len(everything)),
            session,
            everything,
        )

        def on_axis(s: Session, ax, ch, chosen, op):
            if s.case is None:
                return gr.skip(), None, ""
            rgb, middle, text = _picture(s, ax, None, ch, chosen, op)
            return gr.update(maximum=max(slice_count(s.case, ax) - 1, 1), value=middle), rgb, text

        axis.change(shown(on_axis), [session, axis, channel, overlays, opacity], [index, image, where])
        for control in (index, channel, overlays, opacity):
            control.change(shown(picture), view_inputs, [image, where], show_progress="hidden")

        def ask(s: Session, text: str, policy_name: str, messages: list[dict], ax, ch, chosen, op):
            text = (text or "").strip()
            if not text:
                raise gr.Error("Type a question first.")
            messages = [*messages, {"role": "user", "content": text}]
            if not bench.loaded(policy_name):  # the embedded model takes ~30 s to load on first use
                title = f"Loading the {policy_name} policy (first question only)…"
                loading = {"role": "assistant", "content": "", "metadata": {"title": title, "status": "pending"}}
                yield s, [*messages, loading], "", *(gr.skip(),) * 6
                bench.agent(policy_name)
            thinking = {"role": "assistant", "content": "", "metadata": {"title": "Thinking…", "status": "pending"}}
            yield s, [*messages, thinking], "", *(gr.skip(),) * 6
            for kind, payload in bench.ask(s, text, policy_name):
                if kind == "step":
                    messages.append(payload)
                    yield s, [*messages, thinking], "", *(gr.skip(),) * 6
                else:
                    messages.append({"role": "assistant", "content": payload})
            layers, _ = s.layers(bench.home)
            names = list(layers)
            keep = [n for n in chosen or [] if n in layers] + [n for n in names if n not in (chosen or [])]
            rgb, shown_index, text_where = _picture(s, ax, None, ch, keep, op)
            threads = gr.update(choices=bench.threads(), value=s.thread_id)
            pics = s.pictures(bench.home)
            yield s, messages, "", gr.update(choices=names, value=keep), rgb, text_where, pics, threads, shown_index

        ask_inputs = [session, question, policy_pick, chat, axis, channel, overlays, opacity]
        ask_outputs = [session, chat, question, overlays, image, where, gallery, thread, index]
        send.click(shown(ask), ask_inputs, ask_outputs, concurrency_limit=1)
        question.submit(shown(ask), ask_inputs, ask_outputs, concurrency_limit=1)
        good.click(shown(lambda s: bench.judge(s, True)), session, verdict)
        bad.click(shown(lambda s: bench.judge(s, False)), session, verdict)
        app.load(lambda: gr.update(choices=bench.threads()), None, thread)
    return app


def launch(policy: str = "embedded", host: str = "127.0.0.1", port: int = 7860, open_browser: bool = False) -> None:
    """Serve the UI until interrupted."""
    gr = _gradio()
    app = build(Workbench(), policy)
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    app.queue().launch(
        server_name=host, server_port=port, share=False, inbrowser=open_browser, theme=theme, ssr_mode=False
    )
