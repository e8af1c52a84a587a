"""eventd: guards the container images a Kubernetes cluster runs.

Data flows sources -> events -> engine (fields, rules) -> alerts -> sinks; each
of those is a sub-package or module of the same name.
"""

__version__ = "0.1.0"
