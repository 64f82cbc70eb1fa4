import sys

from recbole_cllm4rec.benchmark.cli import main

sys.exit(main())
