from deltann.cli import main

raise SystemExit(main())
