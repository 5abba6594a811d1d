from adamgen.cli import main

raise SystemExit(main())
