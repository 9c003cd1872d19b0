import sys

from moodwire.cli import main

sys.exit(main())
