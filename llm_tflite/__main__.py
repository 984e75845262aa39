import sys

from llm_tflite.cli import main

sys.exit(main())
