import sys

from hinas.cli import main

sys.exit(main())
