from cifar.cli import main

raise SystemExit(main())
