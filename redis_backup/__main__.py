import sys

from redis_backup.cli.main import main

sys.exit(main())
