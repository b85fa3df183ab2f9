import sys

from aar_ray.cli import main

sys.exit(main())
