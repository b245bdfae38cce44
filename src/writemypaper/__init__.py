"""writemypaper: fine-tune a Gemma chat model to turn a Korean paper's summary into its full abstract.

Start with `writemypaper demo`, or `writemypaper --help` for the verbs.
"""

__version__ = "0.1.0"
