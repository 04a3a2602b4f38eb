"""The web chat (``demo_web.py``): a Gradio page in front of the same chat engine as the command-line demos.

Gradio is an optional dependency (``pip install 'facegpt[web]'``); nothing here imports it until the app is built.
"""
