"""Where alerts go: one module per output, all behind ``base.Sink``."""
