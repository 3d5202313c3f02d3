"""The ``generator`` section of each built-in producer kind, one module per ``generator.kind``.

Each module holds its kind's config dataclass (a :class:`synthkit.config.GeneratorConfig`) and nothing else,
so loading and validating a pipeline imports neither torch nor diffusers: the registry (``PRODUCERS`` in
``synthkit/registry.py``) names a kind's config class and its trainer apart, and the trainer
(``synthkit/producers/KIND.py``), its sampler (``synthkit/samplers/``) and its networks
(``synthkit/generators/``) import the config from here. It sits beneath all three, which is why it is a
package of its own rather than a module in each of them.
"""
