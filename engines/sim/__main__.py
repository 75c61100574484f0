import sys

from engines.sim.cli import main

sys.exit(main())
