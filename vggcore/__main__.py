"""``python -m vggcore {train,eval,info}``; see vggcore.cli."""

import sys

from .cli import main

sys.exit(main())
