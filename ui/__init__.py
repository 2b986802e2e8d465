"""The web UI: a Gradio app (``macro ui``) over a plain-Python workbench."""
