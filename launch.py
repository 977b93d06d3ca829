"""Start the 数智岐黄 Tuner workbench.

The browser workbench (app/) is being built; until it lands this prints how to do the same work
from the command line, which the workbench will drive through the very same core functions.
"""

import sys

MESSAGE = """数智岐黄 Tuner: 网页工作台即将推出；现在可用命令行完成同样的工作。
The browser workbench is coming in a later release; meanwhile the command line does the same work:

  python -m trainer_core data check tcm_qa tcm_dialog      # 检查数据 / check the data
  python -m trainer_core train presets/sft_lora.yaml        # 训练 LoRA / train a LoRA adapter
  python -m trainer_core train --help
"""


def main() -> int:
    print(MESSAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
