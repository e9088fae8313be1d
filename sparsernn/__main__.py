import sys

from sparsernn.cli import main

sys.exit(main())
