import sys

from pi.service.cli import main

sys.exit(main())
