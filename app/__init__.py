"""The Gradio Blocks workbench (`python launch.py`): one module per tab under app/tabs/, one i18n
table (app/i18n.py, Chinese first, English second).

It only imports trainer_core, never the reverse; heavy work runs as jobs in their own processes,
and torch/transformers are imported only by the handlers that need them (chat, token statistics).
"""
