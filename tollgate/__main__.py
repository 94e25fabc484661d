"""`python -m tollgate …` is the `tollgate` command."""

import sys

from tollgate.service.cli import main

sys.exit(main())
