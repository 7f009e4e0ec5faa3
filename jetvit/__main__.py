import sys

from jetvit.cli import main

sys.exit(main())
