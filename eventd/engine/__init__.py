"""The rule engine: Falco's rule language compiled to closures.

``parser`` reads conditions into the ``ast``; ``loader`` reads YAML rule files
(lists, macros, rules, exceptions, overrides); ``compiler`` turns conditions
into predicates over ``fields``; ``index`` picks the rules an event can meet;
``output`` renders ``%field`` outputs; ``matcher`` ties them together.
"""
