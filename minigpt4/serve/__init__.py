"""An OpenAI-compatible HTTP server around the chat engine (``facegpt-serve``).

* :mod:`minigpt4.serve.protocol` — request parsing and limits (OpenAI chat-completions JSON → a checked request);
* :mod:`minigpt4.serve.worker` — the one thread that owns the model, fed by a bounded queue;
* :mod:`minigpt4.serve.app` — the FastAPI app (``/v1/chat/completions``, ``/v1/models``, ``/health``);
* :mod:`minigpt4.serve.cli` — the ``facegpt-serve`` command.

FastAPI and uvicorn are the ``serve`` extra (``pip install -e .[serve]``); importing this package needs neither.
"""
