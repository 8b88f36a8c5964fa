"""Settings shared by every test directory.

The "mutation" Hypothesis profile is for the mutation run (``scripts/mutation``, which passes
``--hypothesis-profile=mutation``): every mutant runs the same few examples, so a mutant's verdict
does not depend on luck and a surviving mutant costs seconds, not minutes.
"""

from hypothesis import settings

settings.register_profile("mutation", max_examples=5, derandomize=True, database=None)
