import sys

from asymmetry.cli import main

sys.exit(main())
