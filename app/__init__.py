"""The Gradio Blocks workbench: one module per tab and an i18n table (zh first, en).

It only imports trainer_core, never the reverse; heavy work runs as jobs in their own processes.
The tabs arrive with the workbench issue; launch.py says so until then.
"""
