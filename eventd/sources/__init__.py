"""Where events come from: one module per input, all behind ``base.Source``."""
