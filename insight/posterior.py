"""Old import path of insight.selection.posterior, kept so that code written against it (and
branches not yet merged) keeps working: this module *is* insight.selection.posterior (same
object in sys.modules, so patches and isinstance checks agree). New code imports from
insight.selection.posterior.
"""

import sys

from insight.selection import posterior as _module

sys.modules[__name__] = _module
