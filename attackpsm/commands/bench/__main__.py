"""``python -m attackpsm.commands.bench``: the same as ``python -m attackpsm bench``."""

from attackpsm.commands.bench import main

raise SystemExit(main())
