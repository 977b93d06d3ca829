"""数智岐黄 Tuner core: config, data, models, training and jobs. Never imports gradio."""

__version__ = "0.1.0"
