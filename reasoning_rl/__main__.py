import sys

from reasoning_rl.cli import main

sys.exit(main())
