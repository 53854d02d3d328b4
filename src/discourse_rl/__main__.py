"""`python -m discourse_rl ...` is the `discourse-rl` command, so launchers that run modules
(`torchrun -m`, `accelerate launch -m`) can start it."""

from __future__ import annotations

import sys

from discourse_rl.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
