"""Allow ``python -m eventd``."""

from eventd.cli import main

raise SystemExit(main())
