"""`python -m harness.report merge|gate ...`."""

import sys

from harness.report.files import main

sys.exit(main())
