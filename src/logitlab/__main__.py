from logitlab.cli import main

raise SystemExit(main())
